"""The one way a stage draws a PNG: off-screen (no display on a training node), laid out, saved, closed.

Text reaches a figure from datasets (subject names), settings and artifact names, so it is drawn
as it is: matplotlib's math text is off (a subject named `$^^^$` killed an eval after all its
generation), TeX is off, control characters become '?' and every label is cut (LABEL_LIMIT, TICK_LIMIT).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

from r1v3.artifacts import clip

LABEL_LIMIT = 100
TICK_LIMIT = 40  # a category's name beside its bar: the plot keeps most of the width


def label(value, limit: int = LABEL_LIMIT) -> str:
    """`value` as a figure draws it as it is: cut to `limit` characters, control characters as '?'."""
    return clip(value if isinstance(value, str) else str(value), limit)


@contextlib.contextmanager
def figure(path: str | Path, **subplots) -> Iterator[tuple]:
    """`with figure(path, figsize=(7, 4)) as (fig, ax): ...` saves `path` at 100 dpi when the block ends
    (nothing is written if it raises); keyword arguments go to `plt.subplots` (nrows, ncols, sharex...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.category import StrCategoryFormatter
    from matplotlib.text import Text
    from matplotlib.ticker import FuncFormatter

    # every Text is made under these settings, tick labels included (they are made while drawing)
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        fig, axes = plt.subplots(**subplots)
        try:
            yield fig, axes
            for text in fig.findobj(Text):
                text.set_text(label(text.get_text()))
            for ax in fig.axes:  # category names (a bar per subject) become tick labels only when drawn
                for axis in (ax.xaxis, ax.yaxis):
                    names = axis.get_major_formatter()
                    if isinstance(names, StrCategoryFormatter):
                        axis.set_major_formatter(FuncFormatter(lambda x, pos, names=names: label(names(x, pos), TICK_LIMIT)))
            with warnings.catch_warnings():  # a long label: the layout does what it can, quietly
                warnings.filterwarnings("ignore", message="Tight layout not applied")
                fig.tight_layout()
            fig.savefig(path, dpi=100)
        finally:
            plt.close(fig)
