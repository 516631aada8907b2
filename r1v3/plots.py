"""The one way a stage draws a PNG: off-screen (no display on a training node), laid out, saved, closed."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def figure(path: str | Path, **subplots) -> Iterator[tuple]:
    """`with figure(path, figsize=(7, 4)) as (fig, ax): ...` saves `path` at 100 dpi when the block ends
    (nothing is written if it raises); keyword arguments go to `plt.subplots` (nrows, ncols, sharex...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
