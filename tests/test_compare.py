"""Paired comparisons of evals: the statistics against known answers, and `r1v3 compare` end to end."""

from __future__ import annotations

import json
import math

import pytest

from r1v3 import stats
from r1v3.errors import UserError


def test_mcnemar_is_the_exact_binomial_tail():
    assert stats.mcnemar(0, 0) == 1.0
    assert stats.mcnemar(0, 6) == pytest.approx(2 / 64)  # all 6 discordant items one way
    assert stats.mcnemar(3, 3) == 1.0
    assert stats.mcnemar(2, 10) == pytest.approx(2 * sum(math.comb(12, i) for i in range(3)) / 2 ** 12)


def test_paired_bootstrap_covers_the_difference_and_narrows_with_items():
    small = stats.paired([0, 1] * 50, [1, 1] * 50)  # 50 of 100 items flip to right
    assert small.diff == pytest.approx(0.5) and small.low < 0.5 < small.high
    assert (small.a_only, small.b_only) == (0, 50) and small.p_mcnemar < 1e-10
    width = lambda p: p.high - p.low  # noqa: E731
    a, b = [0, 1, 1, 0] * 25, [1, 0, 1, 0] * 25  # a quarter flip each way: no difference
    few, many = stats.paired(a, b), stats.paired(a * 10, b * 10)
    assert few.low < 0 < few.high and many.low < 0 < many.high
    assert width(many) < width(few) / 2.5  # ~sqrt(10) narrower
    assert stats.paired([0.25, 0.5], [0.5, 0.75]).p_mcnemar is None  # mean@k scores: no McNemar
    with pytest.raises(UserError, match="same items"):
        stats.paired([1], [1, 0])


def test_compare_cli_paired_by_level(cli):
    assert cli("init", "tiny", "--name", "tiny")[0] == 0
    assert cli("data", "synth", "--name", "probs", "--problems", "40", "--tasks", "color")[0] == 0
    common = ("eval", "mmmu", "--model", "tiny", "--data", "probs", "--split", "train", "--max-new-tokens", "2",
              "--batch-size", "8", "--limit", "12")
    assert cli(*common, "--temperature", "0", "--name", "greedy")[0] == 0
    assert cli(*common, "--temperature", "1", "--samples", "2", "--name", "sampled")[0] == 0
    code, out, err = cli("compare", "greedy", "sampled", "--json")
    assert code == 0, err
    result = json.loads(out)
    overall = result["comparisons"][0]["groups"][0]
    assert result["baseline"] == "greedy@v1" and overall["by"] == "overall" and overall["n"] == 12
    assert overall["low"] <= overall["diff"] <= overall["high"]
    assert 0.1 < overall["chance"] < 0.6  # colour problems: a quarter to a sixth by guessing
    assert {g["by"] for g in result["comparisons"][0]["groups"]} == {"overall", "subject", "difficulty"}
    code, out, err = cli("compare", "greedy", "sampled")
    assert code == 0 and "paired over items" in out and "difficulty=normal" in out, out
    code, _, err = cli("compare", "greedy")
    assert code == 2 and "needs a baseline and at least one eval" in err
    code, _, err = cli("compare", "greedy", "probs")
    assert code == 2 and "dataset" in err and "eval" in err
