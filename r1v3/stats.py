"""Statistics for comparing two models on the same items: the paired bootstrap interval of the
accuracy difference, and McNemar's exact test on the items where exactly one model is right.

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
