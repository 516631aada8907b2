"""A small synthetic MMMU copy in the hub layout, for tests (and benchmarks: import it from here).

Every subject gets a few drawn items: multiple-choice and open, some with two images and
`<image 2>` as an option, some with an empty image slot, so an import meets every layout.
"""

from __future__ import annotations

import random
from pathlib import Path

from r1v3.mmmu import HUB_COLUMNS, SUBJECTS

_COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
            "yellow": (230, 200, 30), "purple": (140, 60, 170), "orange": (240, 140, 30)}


def _draw(rng: random.Random, colour: str, dots: int = 0, size: int = 48):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    fill = _COLOURS[colour]
    if dots:
        for _ in range(dots):
            x, y = rng.randrange(4, size - 10), rng.randrange(4, size - 10)
            draw.ellipse((x, y, x + 6, y + 6), fill=fill)
    else:
        x, y = rng.randrange(2, size // 3), rng.randrange(2, size // 3)
        draw.rectangle((x, y, x + size // 2, y + size // 2), fill=fill)
    return img


def _sample_item(rng: random.Random, subject: str, split: str, number: int) -> dict:
    """One synthetic item; the kind cycles over items and subjects, so any copy with
    4 items per subject, or with 1 item of each of 4 subjects, has every layout."""
    kind = (number - 1 + SUBJECTS.index(subject)) % 4
    colours = rng.sample(sorted(_COLOURS), 4)
    item = {c: None for c in HUB_COLUMNS}
    item.update(id=f"{split}_{subject}_{number}", explanation="", img_type="['Diagrams']",
                topic_difficulty=rng.choice(["Easy", "Medium", "Hard"]),
                subfield=subject.replace("_", " "))
    if kind == 0:  # multiple choice, one image
        right = rng.randrange(4)
        item.update(question="What colour is the square in <image 1>?", options=repr(colours),
                    image_1=_draw(rng, colours[right]), answer="ABCD"[right],
                    question_type="multiple-choice")
    elif kind == 1:  # open, one image
        dots = rng.randint(1, 5)
        item.update(question="How many dots are in <image 1>?", options="[]",
                    image_1=_draw(rng, colours[0], dots=dots), answer=str(dots),
                    question_type="open")
    elif kind == 2:  # two images, the second one shown as an option
        item.update(question="<image 1> shows a square. Which option has the same colour?",
                    options=repr([colours[1], "<image 2>", colours[2], colours[3]]),
                    image_1=_draw(rng, colours[0]), image_2=_draw(rng, colours[0]),
                    answer="B", question_type="multiple-choice")
    else:  # images in slots 1 and 3 (slot 2 empty): placeholders must be renumbered
        right = rng.randrange(4)
        item.update(question="<image 1> is a reference. What colour is the square in <image 3>?",
                    options=repr(colours), image_1=_draw(rng, "orange", dots=2),
                    image_3=_draw(rng, colours[right]), answer="ABCD"[right],
                    question_type="multiple-choice")
    return item


def hub_features():
    """The hub's MMMU column types (every image column an Image())."""
    from datasets import Features, Image, Value

    return Features({
        c: Image() if c.startswith("image_") else Value("string") for c in HUB_COLUMNS
    })


def write_sample_copy(path, per_subject: int = 4, seed: int = 0, split: str = "validation") -> Path:
    """Write a small MMMU-format copy: every subject, `per_subject` synthetic items each
    (multiple-choice and open, some with two images and `<image 2>` as an option, some with
    an empty image slot), as `<path>/<Subject>/<split>-00000-of-00001.parquet`.
    """
    import datasets

    if per_subject < 1:
        raise ValueError(f"per_subject must be at least 1, got {per_subject}")
    root = Path(path)
    features = hub_features()
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one bar per subject file is noise in tests
    try:
        for subject in SUBJECTS:
            rng = random.Random(f"{seed}/{subject}/{split}")
            items = [_sample_item(rng, subject, split, n) for n in range(1, per_subject + 1)]
            columns = {c: [item[c] for item in items] for c in HUB_COLUMNS}
            folder = root / subject
            folder.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict(columns, features=features).to_parquet(
                str(folder / f"{split}-00000-of-00001.parquet")
            )
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    return root
