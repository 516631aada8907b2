"""Statistics, over scipy and numpy: for comparing two models on the same items, the paired bootstrap
interval of the accuracy difference and McNemar's exact test on the items where exactly one model is
right; and Spearman's rank correlation with its p-value.

Both are over items, paired: the same item answered by both models. A paired difference on n items
where a fraction d of them flips has a 95% half-width of about 1.96 * sqrt(d / n), so 100 items see
about 12 points and 1000 items about 3 (d = 0.25).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from r1v3.errors import UserError

RESAMPLES = 2000


class Paired(NamedTuple):
    n: int
    a: float  # mean of the baseline's per-item scores
    b: float
    diff: float  # b - a
    low: float  # 95% paired bootstrap interval of diff
    high: float
    a_only: int  # items only the baseline got right (binary scores)
    b_only: int
    p_mcnemar: float | None  # exact two-sided; None unless every score is 0 or 1


def paired(a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0,
           level: float = 0.95) -> Paired:
    """Compare per-item scores a (baseline) and b (1/0 per item, or mean@k fractions) on the same items."""
    import numpy as np

    if len(a) != len(b):
        raise UserError(f"a paired comparison needs the same items: {len(a)} scores against {len(b)}")
    if not a:
        raise UserError("a paired comparison needs at least one item in common")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = y - x
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    binary = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    return Paired(len(d), float(x.mean()), float(y.mean()), float(d.mean()), float(low), float(high), a_only, b_only,
                  mcnemar(a_only, b_only) if binary else None)


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: under no difference, each discordant item is a fair coin."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


# ---------------------------------------------------------------------------------------------
# Spearman rank correlation (select-ckpt: critical-token entropy against accuracy across checkpoints)

EXACT_SPEARMAN_MAX_N = 8  # 8! = 40320 permutations: exact p-values stay instant


def ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the average of the ranks they span."""
    from scipy.stats import rankdata

    return [float(r) for r in rankdata(xs, method="average")]


def _pearson(a: Sequence[float], b: Sequence[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def t_pvalue(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with df degrees of freedom."""
    from scipy.stats import t as student

    return float(2 * student.sf(abs(t), df)) if math.isfinite(t) else 0.0


def spearman(x, y) -> tuple[float, float]:
    """(rho, two-sided p-value) of Spearman's rank correlation, ties given average ranks.

    p-value: exact for n <= EXACT_SPEARMAN_MAX_N (the share of all n! pairings of the ranks whose
    |rho| reaches the observed one, so never below 1/n!: a handful of checkpoints is where the t
    approximation misleads most), else Student's t with n-2 degrees of freedom on
    t = rho * sqrt((n-2) / (1-rho^2)). (nan, nan) when either side is constant.
    """
    import itertools

    x, y = list(x), list(y)
    if len(x) != len(y):
        raise UserError(f"spearman needs pairs: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        raise UserError(f"spearman needs at least 2 pairs, got {len(x)}")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in x + y):
        raise UserError("spearman values must be finite numbers")
    rx, ry = ranks(x), ranks(y)
    rho = _pearson(rx, ry)
    if math.isnan(rho):
        return math.nan, math.nan
    n = len(x)
    if n <= EXACT_SPEARMAN_MAX_N:
        hits = sum(abs(_pearson(rx, list(p))) >= abs(rho) - 1e-12 for p in itertools.permutations(ry))
        return rho, hits / math.factorial(n)
    if abs(rho) >= 1.0:
        return rho, 0.0
    return rho, t_pvalue(rho * math.sqrt((n - 2) / (1 - rho * rho)), n - 2)
