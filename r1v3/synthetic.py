"""Synthetic visual reasoning problems drawn with Pillow, for offline runs of the recipe.

Five tasks (the row's `subject`), each in multiple-choice and open form and at two levels:

    counting    how many shapes of a kind; hard: smaller shapes, a colour+kind target and
                distractors that share its colour or its kind
    color       the colour of the only shape of a kind; hard: several of that kind, pick the
                leftmost/rightmost/topmost/bottommost one
    spatial     left/right/above/below of two shapes; hard: distractors sharing colour or kind
    arithmetic  two drawn digits, sum or difference; hard: 3-4 two-digit numbers in two colours
                and a two-step computation
    chart       bar chart, tallest/shortest bar; hard: more bars and comparisons (count taller,
                second tallest, tallest minus shortest in grid units)

The `caption` spells out everything drawn (every shape or number with its colour and pixel
position, every bar with its height) so a text-only teacher can solve the problem from it.
Rows follow the schema of r1v3.data; this module imports only Pillow so it stays fast.
"""

import hashlib
import random
import re

from PIL import Image, ImageDraw, ImageFont

from r1v3.errors import UserError

SIZE = 96
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 190, 0),
    "purple": (140, 50, 180),
    "black": (20, 20, 20),
}
COLOR_NAMES = list(COLORS)
KINDS = ["circle", "square", "triangle", "cross"]
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
TASKS = ["counting", "color", "spatial", "arithmetic", "chart"]
DIFFICULTIES = ["normal", "hard"]
FORMS = ["multiple-choice", "open"]
RELATIONS = ["left", "right", "above", "below"]
LETTERS = "ABCD"
POSITION_NOTE = "positions are centres in pixels, x from the left edge, y from the top edge"


# -----------------------------------------------------------------------------
# drawing helpers

def _region(x, y, size):
    row = ("top", "middle", "bottom")[min(2, 3 * y // size)]
    col = ("left", "center", "right")[min(2, 3 * x // size)]
    return "center" if (row, col) == ("middle", "center") else f"{row} {col}"


def _place(rng, items, grid, size, cells=None):
    """Give each (kind, color) item its own grid cell and a jittered centre.

    One item per cell means shapes never overlap, so what is drawn is exactly what the
    caption says. `cells` may fix some cells (list aligned with items, None = random).
    """
    step = size / grid
    cells = list(cells) if cells is not None else [None] * len(items)
    free = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in cells]
    rng.shuffle(free)
    jitter = max(1, round(step * 0.1))
    objs = []
    for (kind, color), cell in zip(items, cells):
        if cell is None:
            cell = free.pop()
        x = round((cell[1] + 0.5) * step) + rng.randint(-jitter, jitter)
        y = round((cell[0] + 0.5) * step) + rng.randint(-jitter, jitter)
        objs.append({"kind": kind, "color": color, "cell": cell, "x": x, "y": y})
    return objs


def _draw_shapes(objs, grid, size):
    radius = round(size / grid * 0.3)
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    for o in objs:
        x, y, r, fill = o["x"], o["y"], radius, COLORS[o["color"]]
        if o["kind"] == "circle":
            d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o["kind"] == "square":
            s = round(r * 0.85)
            d.rectangle([x - s, y - s, x + s, y + s], fill=fill)
        elif o["kind"] == "triangle":
            d.polygon([(x, y - r), (x - r, y + round(r * 0.8)), (x + r, y + round(r * 0.8))], fill=fill)
        else:  # cross
            w = max(1, round(r * 0.35))
            d.rectangle([x - r, y - w, x + r, y + w], fill=fill)
            d.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    return img, 2 * radius


def _reading_order(objs):
    # describe objects row by row, not in the order they were made: the creation order
    # (targets first) would leak the answer into the caption
    return sorted(objs, key=lambda o: o["cell"])


def _shapes_caption(objs, size, across):
    parts = [f"a {o['color']} {o['kind']} at {_region(o['x'], o['y'], size)} (x={o['x']}, y={o['y']})"
             for o in _reading_order(objs)]
    shapes = "1 shape" if len(objs) == 1 else f"{len(objs)} shapes, each"
    return (f"A {size}x{size} image on a white background with {shapes} about {across} px across "
            f"({POSITION_NOTE}): " + "; ".join(parts) + ".")


def _numeric_wrong(answer, candidates, negative=False):
    """Distinct wrong numeric answers (at least 3): plausible mistakes, then near misses."""
    out = []
    for v in list(candidates) + [answer + 1, answer - 1, answer + 2, answer - 2, answer + 3, answer + 4]:
        if v != answer and str(v) not in out and (negative or v >= 0):
            out.append(str(v))
    return out


# -----------------------------------------------------------------------------
# tasks: each returns image, question, open-form hint, answer, wrong answers, caption

def _counting(rng, hard, size):
    kind = rng.choice(KINDS)
    others = [k for k in KINDS if k != kind]
    if hard:
        grid, color = 4, rng.choice(COLOR_NAMES)
        count = rng.randint(2, 7)
        items = [(kind, color)] * count
        for _ in range(rng.randint(3, min(8, 12 - count))):
            # a distractor shares the target's colour or its kind, never both
            if rng.random() < 0.5:
                items.append((kind, rng.choice([c for c in COLOR_NAMES if c != color])))
            else:
                items.append((rng.choice(others), color))
        question = f"How many {color} {PLURAL[kind]} are in the image?"
    else:
        grid, count = 3, rng.randint(1, 4)
        items = [(kind, rng.choice(COLOR_NAMES)) for _ in range(count)]
        items += [(rng.choice(others), rng.choice(COLOR_NAMES)) for _ in range(rng.randint(0, 2))]
        question = f"How many {PLURAL[kind]} are in the image?"
    objs = _place(rng, items, grid, size)
    img, across = _draw_shapes(objs, grid, size)
    wrong = _numeric_wrong(count, [len(objs)] + [v for v in range(count - 2, count + 3) if v >= 0])
    return img, question, "Answer with a number.", str(count), wrong, _shapes_caption(objs, size, across)


def _color(rng, hard, size):
    if hard:
        grid, kind = 4, rng.choice(KINDS)
        qualifier = rng.choice(["leftmost", "rightmost", "topmost", "bottommost"])
        axis = 1 if qualifier in ("leftmost", "rightmost") else 0
        pick = min if qualifier in ("leftmost", "topmost") else max
        colors = rng.sample(COLOR_NAMES, rng.randint(3, 4))
        distract = [(rng.choice([k for k in KINDS if k != kind]), rng.choice(COLOR_NAMES))
                    for _ in range(rng.randint(1, 3))]
        while True:
            objs = _place(rng, [(kind, c) for c in colors] + distract, grid, size)
            targets = objs[:len(colors)]
            end = pick(o["cell"][axis] for o in targets)
            chosen = [o for o in targets if o["cell"][axis] == end]
            if len(chosen) == 1:  # the qualifier must name exactly one shape
                break
        answer = chosen[0]["color"]
        question = f"What color is the {qualifier} {kind}?"
    else:
        grid = 3
        kinds = rng.sample(KINDS, rng.randint(1, 2))
        colors = rng.sample(COLOR_NAMES, len(kinds))
        objs = _place(rng, list(zip(kinds, colors)), grid, size)
        answer = colors[0]
        question = f"What color is the {kinds[0]}?"
    img, across = _draw_shapes(objs, grid, size)
    wrong = [c for c in COLOR_NAMES if c != answer]
    return img, question, "Answer with a color name.", answer, wrong, _shapes_caption(objs, size, across)


def _spatial(rng, hard, size):
    grid = 4 if hard else 3
    relation = rng.choice(RELATIONS)
    (kind_a, kind_b), (color_a, color_b) = rng.sample(KINDS, 2), rng.sample(COLOR_NAMES, 2)
    # A and B share a row (or column) and are at least a cell apart, so the relation is
    # unambiguous whatever the jitter
    line, (lo, hi) = rng.randrange(grid), sorted(rng.sample(range(grid), 2))
    near, far = (lo, hi) if relation in ("left", "above") else (hi, lo)
    if relation in ("left", "right"):
        cell_a, cell_b = (line, near), (line, far)
    else:
        cell_a, cell_b = (near, line), (far, line)
    items, cells = [(kind_a, color_a), (kind_b, color_b)], [cell_a, cell_b]
    if hard:
        for _ in range(rng.randint(2, 4)):
            # distractors look like A or B (same colour or same kind) but are never identical,
            # so "the red circle" still names one shape
            while True:
                kind = rng.choice(KINDS)
                color = rng.choice(COLOR_NAMES)
                if (kind, color) not in items[:2] and (kind in (kind_a, kind_b) or color in (color_a, color_b)):
                    break
            items.append((kind, color))
            cells.append(None)
    objs = _place(rng, items, grid, size, cells)
    img, across = _draw_shapes(objs, grid, size)
    question = f"Where is the {color_a} {kind_a} relative to the {color_b} {kind_b}?"
    wrong = [r for r in RELATIONS if r != relation]
    return (img, question, "Answer with one word: left, right, above or below.", relation, wrong,
            _shapes_caption(objs, size, across))


def _arithmetic(rng, hard, size):
    grid = 2
    if hard:
        numbers = rng.sample(range(10, 50), rng.randint(3, 4))
        colors = ["red", "blue"] + [rng.choice(["red", "blue"]) for _ in numbers[2:]]
        rng.shuffle(colors)
        if rng.random() < 0.5:
            answer = sum(numbers) - min(numbers)
            question = "Add all the numbers shown, then subtract the smallest one. What is the result?"
            wrong = _numeric_wrong(answer, [sum(numbers), sum(numbers) - max(numbers), answer + 10, answer - 10])
        else:
            red = sum(n for n, c in zip(numbers, colors) if c == "red")
            blue = sum(n for n, c in zip(numbers, colors) if c == "blue")
            answer = red - blue
            question = "What is the sum of the red numbers minus the sum of the blue numbers?"
            wrong = _numeric_wrong(answer, [blue - red, red + blue, answer + 10, answer - 10], negative=True)
        font_px = round(size * 0.21)
    else:
        numbers = [rng.randint(1, 9) for _ in range(2)]
        colors = ["black", "black"]
        a, b = numbers
        if rng.random() < 0.5:
            answer = a + b
            question = "What is the sum of the numbers shown?"
            wrong = _numeric_wrong(answer, [a * b, abs(a - b)])
        else:
            answer = abs(a - b)
            question = "What is the larger number minus the smaller number?"
            wrong = _numeric_wrong(answer, [a + b])
        font_px = round(size * 0.25)
    objs = _place(rng, [(str(n), c) for n, c in zip(numbers, colors)], grid, size)
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_px)
    for o in objs:
        d.text((o["x"], o["y"]), o["kind"], fill=COLORS[o["color"]], font=font, anchor="mm")
    parts = [f"{o['kind']} in {o['color']} at {_region(o['x'], o['y'], size)} (x={o['x']}, y={o['y']})"
             for o in _reading_order(objs)]
    caption = (f"A {size}x{size} image on a white background with {len(objs)} numbers written in digits about "
               f"{font_px} px tall ({POSITION_NOTE}): " + "; ".join(parts) + ".")
    return img, question, "Answer with a number.", str(answer), wrong, caption


def _chart(rng, hard, size):
    m = 5 if hard else 4
    colors = rng.sample(COLOR_NAMES, m)
    values = rng.sample(range(1, 10), m)  # distinct heights: "tallest" always names one bar
    ranked = [c for _, c in sorted(zip(values, colors), reverse=True)]
    if hard:
        variant = rng.randrange(3)
        if variant == 0:
            ref = rng.choice(colors)
            answer = str(sum(v > values[colors.index(ref)] for v in values))
            question = f"How many bars are taller than the {ref} bar?"
            wrong = _numeric_wrong(int(answer), range(m))
        elif variant == 1:
            answer = ranked[1]
            question = "Which bar is the second tallest?"
            wrong = [c for c in ranked if c != answer]
        else:
            answer = str(max(values) - min(values))
            question = "How many units taller is the tallest bar than the shortest bar?"
            wrong = _numeric_wrong(int(answer), [max(values), max(values) - sorted(values)[1]])
    else:
        which = rng.choice(["tallest", "shortest"])
        answer = ranked[0] if which == "tallest" else ranked[-1]
        question = f"Which bar is the {which}?"
        wrong = [c for c in ranked if c != answer]
    hint = "Answer with a number." if answer.isdigit() else "Answer with the color of the bar."

    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    left, right = round(size * 0.08), size - round(size * 0.04)
    top, bottom = round(size * 0.06), size - round(size * 0.08)
    unit = (bottom - top) / 9
    for v in range(10):
        y = round(bottom - v * unit)
        d.line([(left, y), (right, y)], fill=(210, 210, 210))
    slot = (right - left) / m
    for i, (c, v) in enumerate(zip(colors, values)):
        x0 = round(left + i * slot + slot * 0.2)
        x1 = round(left + (i + 1) * slot - slot * 0.2)
        d.rectangle([x0, round(bottom - v * unit), x1, bottom], fill=COLORS[c])
    d.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))
    caption = (f"A {size}x{size} bar chart on a white background: light gray horizontal gridlines mark every "
               f"unit of height from 0 to 9, and {m} vertical bars stand on the baseline, from left to right: "
               + "; ".join(f"{c} (height {v})" for c, v in zip(colors, values)) + ".")
    return img, question, hint, answer, wrong, caption


MAKERS = {"counting": _counting, "color": _color, "spatial": _spatial, "arithmetic": _arithmetic, "chart": _chart}


# -----------------------------------------------------------------------------

def problem_key(question, image):
    """Identity of a problem for overlap checks: its question and its pixels."""
    h = hashlib.sha256(question.encode())
    h.update(f"|{image.mode}|{image.size}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


# Every row's problem key is kept to keep problems distinct across splits (about 150 bytes a row),
# and rows take about 1 ms each to draw: a million rows is ~150 MB of keys and a quarter of an hour.
MAX_N = 1_000_000


def split_sizes(n):
    """(train, validation, test) row counts: 80/10/10, at least one row each."""
    n_val = n_test = max(1, n // 10)
    return n - n_val - n_test, n_val, n_test


def generate(n, seed, size=SIZE, tasks=None, difficulties=None):
    """n problem rows split into train/validation/test (80/10/10), deterministic for a seed.

    Rows cycle through every task x difficulty x form (of the `tasks` and `difficulties` asked
    for, default all), so any 20 consecutive rows of the full set hold each combination once;
    splits are consecutive runs, so a split of 20+ rows covers them all. No two rows share an id
    or a (question, image) pair, across splits too.
    """
    splits = {"train": [], "validation": [], "test": []}
    for split, row in iter_rows(n, seed, size, tasks, difficulties):
        splits[split].append(row)
    return splits


def iter_rows(n, seed, size=SIZE, tasks=None, difficulties=None):
    """The rows of `generate` as (split, row) pairs, one at a time and in the same order, so a
    writer can hold a few rows in memory rather than all n."""
    if not isinstance(n, int) or isinstance(n, bool) or not 3 <= n <= MAX_N:
        raise UserError(f"synthetic: n must be an integer of at least 3 (one row per split) and at most {MAX_N:,} "
                        f"(every problem's key is kept in memory to keep problems distinct), got {n!r}")
    tasks, difficulties = list(tasks or TASKS), list(difficulties or DIFFICULTIES)
    for value, known, what in ((tasks, TASKS, "task"), (difficulties, DIFFICULTIES, "difficulty")):
        for v in value:
            if v not in known:
                raise UserError(f"synthetic: unknown {what} {v!r}; choose from {', '.join(known)}")
        if len(set(value)) != len(value):
            raise UserError(f"synthetic: a {what} is given twice in {', '.join(value)}")
    # in the module's order whatever order they were asked in, so the same set gives the same rows
    combos = [(t, d, f) for t in TASKS if t in tasks for d in DIFFICULTIES if d in difficulties for f in FORMS]
    return _rows(n, seed, size, combos)  # checked above, before the first row is asked for


def _rows(n, seed, size, combos):
    rng = random.Random(seed)
    n_train, n_val, _ = split_sizes(n)
    seen = set()
    for i in range(n):
        task, difficulty, form = combos[i % len(combos)]
        for _ in range(1000):
            img, question, hint, value, wrong, caption = MAKERS[task](rng, difficulty == "hard", size)
            # keyed on the question without the open-form hint, so one problem cannot turn
            # up in two splits in its two forms
            key = problem_key(question, img)
            if key not in seen:
                break
        else:
            raise RuntimeError(f"synthetic: cannot find a new {difficulty} {task} problem after 1000 tries")
        seen.add(key)
        if form == "multiple-choice":
            options = [value] + rng.sample(wrong, 3)
            rng.shuffle(options)
            answer = LETTERS[options.index(value)]
        else:
            question, options, answer = f"{question} {hint}", [], value
        split = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
        yield split, {
            "id": f"syn-{seed}-{i:05d}",
            "images": [img],
            "question": question,
            "options": options,
            "answer": answer,
            "question_type": form,
            "subject": task,
            "difficulty": difficulty,
            "pass_rate": None,
            "source": "synthetic",
            "caption": caption,
            "messages": [],
            "meta": {},
        }


MESSAGE_STYLES = ("think", "brief", "direct", "caption", "reflect")
CAPTION_PROMPT = "Describe the image briefly."

# the caption's own phrasing, parsed back into objects for the short texts below
_SHAPE = re.compile(r"a (\w+) (\w+) at ([a-z ]+?) \(x=(\d+), y=(\d+)\)")
_NUMBER = re.compile(r"(-?\d+) in (\w+) at ([a-z ]+?) \(x=(\d+), y=(\d+)\)")
_BAR = re.compile(r"(\w+) \(height (\d+)\)")


def _objects(row):
    """What the caption lists, in its (reading) order: shapes, numbers or bars as dicts."""
    caption = row["caption"]
    if "bar chart" in caption:
        return [{"color": c, "height": int(h)} for c, h in _BAR.findall(caption)]
    if row["subject"] == "arithmetic":
        return [{"value": int(v), "color": c, "region": r} for v, c, r, _, _ in _NUMBER.findall(caption)]
    return [{"color": c, "kind": k, "region": r} for c, k, r, _, _ in _SHAPE.findall(caption)]


def short_caption(row):
    """The caption without pixel sizes and coordinates: "a red circle at top left, a blue square at center".

    About a fifth of the full caption's tokens: what connector alignment on a small CPU budget can
    afford, and all a model needs to name what is where.
    """
    objs = _objects(row)
    if "bar chart" in row["caption"]:
        return "a bar chart with bars, from left to right: " + ", ".join(f"{o['color']} {o['height']}" for o in objs)
    if row["subject"] == "arithmetic":
        return ", ".join(f"a {o['color']} {o['value']} at {o['region']}" for o in objs)
    return ", ".join(f"a {o['color']} {o['kind']} at {o['region']}" for o in objs)


def _value(row):
    """The answer as text: the chosen option's text for multiple choice."""
    if row["question_type"] == "multiple-choice":
        return row["options"][LETTERS.index(row["answer"])]
    return row["answer"]


def _listing(objs, color=True):
    return ", ".join(f"{o['color']} at {o['region']}" if color else o["region"] for o in objs)


def brief_reasoning(row):
    """A one- or two-sentence trace that names only the objects the question is about, then the value.

    "There are 3 circles: red at top left, blue at center, green at bottom right." Short enough to
    train and sample on a CPU, and grounded in what is drawn, so a model that learns to write it
    has to look at the image.
    """
    q, v, objs = row["question"].split(" Answer with")[0], _value(row), _objects(row)
    task = row["subject"]
    if task == "counting":
        noun = re.match(r"How many (.+?) are in the image\?", q).group(1)
        words = noun.split()
        kind = {p: k for k, p in PLURAL.items()}[words[-1]]
        color = words[0] if len(words) == 2 else None
        hits = [o for o in objs if o["kind"] == kind and color in (None, o["color"])]
        if not hits:
            return f"There are no {noun}."
        what = noun if len(hits) > 1 else " ".join(words[:-1] + [kind])
        where = ("at " if color else "") + _listing(hits, color=color is None)
        return f"There {'are' if len(hits) > 1 else 'is'} {len(hits)} {what}: {where}."
    if task == "color":
        m = re.match(r"What color is the (?:(\w+most) )?(\w+)\?", q)
        qualifier, kind = m.groups()
        hits = [o for o in objs if o["kind"] == kind]
        if qualifier is None:
            return f"The {kind} is {v}."
        return f"The {PLURAL[kind]}: {_listing(hits)}. The {qualifier} one is {v}."
    if task == "spatial":
        m = re.match(r"Where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", q)
        ca, ka, cb, kb = m.groups()
        a = next(o for o in objs if (o["color"], o["kind"]) == (ca, ka))
        b = next(o for o in objs if (o["color"], o["kind"]) == (cb, kb))
        rel = {"left": "left of", "right": "right of"}.get(v, v)
        return f"The {ca} {ka} is at {a['region']}, the {cb} {kb} at {b['region']}, so it is {rel} it."
    if task == "arithmetic":
        nums = [o["value"] for o in objs]
        if q.startswith("What is the sum of the numbers"):
            return f"{' + '.join(map(str, nums))} = {v}."
        if q.startswith("What is the larger number"):
            return f"{max(nums)} - {min(nums)} = {v}."
        if q.startswith("Add all"):
            return f"{' + '.join(map(str, nums))} = {sum(nums)}, minus {min(nums)} is {v}."
        red = [o["value"] for o in objs if o["color"] == "red"]
        blue = [o["value"] for o in objs if o["color"] == "blue"]
        def total(name, nums):
            return f"{name}: {nums[0]}." if len(nums) == 1 else f"{name}: {' + '.join(map(str, nums))} = {sum(nums)}."
        return f"{total('Red', red)} {total('Blue', blue)} {sum(red)} - {sum(blue)} = {v}."
    # chart: every bar matters to a comparison
    bars = ", ".join(f"{o['color']} {o['height']}" for o in objs)
    return f"The bars: {bars}. So the answer is {v}."


REFLECT_SHARE = 0.5  # rows of the reflect style whose trace corrects itself or weighs an alternative
_RECHECK = {
    "counting": "let me count again",
    "color": "let me look again",
    "spatial": "let me check the positions",
    "arithmetic": "let me recompute",
    "chart": "let me read the bars again",
}


def _wrong_values(row, value):
    """Answers a first look could plausibly give, never the right one: the other options of a
    multiple-choice row, else near misses of the task's kind of answer."""
    if row["options"]:
        return [o for o in row["options"] if o != value]
    if row["subject"] == "color":
        return [c for c in COLOR_NAMES if c != value]
    if row["subject"] == "spatial":
        return [r for r in RELATIONS if r != value]
    if re.fullmatch(r"-?\d+", value):
        return _numeric_wrong(int(value), [], negative=row["subject"] == "arithmetic")
    return [o["color"] for o in _objects(row) if o.get("color") != value] or [c for c in COLOR_NAMES if c != value]


def _first_look(row, wrong):
    """One sentence that misreads the drawing as giving `wrong`."""
    q = row["question"].split(" Answer with")[0]
    if row["subject"] == "counting":
        noun = re.match(r"How many (.+?) are in the image\?", q).group(1)
        if wrong == "1":
            words = noun.split()
            noun = " ".join(words[:-1] + [{p: k for k, p in PLURAL.items()}[words[-1]]])
        return f"At first glance I count {wrong} {noun}."
    if row["subject"] == "color":
        return f"At first glance the answer looks like {wrong}."
    if row["subject"] == "spatial":
        m = re.match(r"Where is the (\w+ \w+) relative to the (\w+ \w+)\?", q)
        rel = {"left": "left of", "right": "right of"}.get(wrong, wrong)
        return f"At first glance the {m.group(1)} seems {rel} the {m.group(2)}."
    if row["subject"] == "arithmetic":
        return f"At first I get {wrong}."
    return f"At first glance the answer looks like {wrong}."


def reflect_reasoning(row, share=REFLECT_SHARE):
    """brief_reasoning's grounded trace, or, for about `share` of the rows, a trace that first
    misreads the drawing and corrects itself after "Wait," or that weighs a wrong alternative after
    "Alternatively," and rejects it: the critical words a reasoning model writes when it changes course.

    The correction is always brief_reasoning's (grounded in the caption, so right by construction);
    only the misread value is wrong, and it is never the answer. Which rows reflect, and how,
    depends only on the row's id, so a row's trace is the same in any subset of rows.
    """
    if not 0 <= share <= 1:
        raise UserError(f"reflect share must be between 0 and 1, got {share!r}")
    grounded = brief_reasoning(row)
    rng = random.Random(hashlib.sha256(f"reflect|{row['id']}".encode()).digest())
    if rng.random() >= share:
        return grounded
    value = _value(row)
    wrong = rng.choice(_wrong_values(row, value))
    if rng.random() < 0.5:
        return f"{_first_look(row, wrong)} Wait, {_RECHECK[row['subject']]}. {grounded}"
    return f"{grounded} Alternatively, could the answer be {wrong}? No: checking again, it is {value}."


def with_solutions(rows, style="think", reflect_share=REFLECT_SHARE):
    """Copies of rows with `messages` for chat SFT, in one of MESSAGE_STYLES:

    think    the reasoning prompt `r1v3 eval mmmu` uses, then a template teacher's answer that
             reasons from the full caption inside <think>...</think> and ends with \\boxed{answer}:
             a cold-start trace without a teacher model (200-400 tokens)
    brief    the reasoning prompt, then a short trace naming only the objects the question is
             about (brief_reasoning) and \\boxed{answer}; evaluate with --style reasoning and a
             small --max-new-tokens
    direct   the official MMMU prompt, then the bare answer (the option letter, or the value);
             evaluate with --style official
    caption  "Describe the image briefly." then short_caption: image-text pairs for connector
             alignment that cost a fifth of the full caption's tokens
    reflect  the reasoning prompt, then brief's trace; for about `reflect_share` of the rows it first
             misreads the drawing and corrects itself after "Wait," or rejects a wrong alternative
             after "Alternatively," (reflect_reasoning): probe data whose traces hold the critical
             words `r1v3 select-ckpt` measures

    The image is not mentioned in the user turn, so trainers put it first, as the eval does.
    """
    if style not in MESSAGE_STYLES:
        raise UserError(f"messages style must be one of {', '.join(MESSAGE_STYLES)}, got {style!r}")
    out = []
    for row in rows:
        prompt, answer = _turns(row, style, reflect_share)
        out.append(dict(row, messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]))
    return out


def _turns(row, style, reflect_share=REFLECT_SHARE):
    """(user turn, assistant turn) of one row in a MESSAGE_STYLES style."""
    from r1v3 import mmmu  # lazy: this module otherwise imports only Pillow

    if style == "caption":
        return CAPTION_PROMPT, short_caption(row)
    prompt = mmmu.prompt_text(row, "official" if style == "direct" else "reasoning")
    if style == "direct":
        return prompt, row["answer"]
    if style == "brief":
        reasoning = brief_reasoning(row)
    elif style == "reflect":
        reasoning = reflect_reasoning(row, reflect_share)
    else:
        if row["question_type"] == "multiple-choice":
            conclusion = f"So the answer is {_value(row)}, which is option {row['answer']}."
        else:
            conclusion = f"So the answer is {row['answer']}."
        question = row["question"].split(" Answer with")[0]  # the open form's hint is not part of the question
        reasoning = f"The image shows: {row['caption']} The question is: {question} {conclusion}"
    return prompt, f"<think>{reasoning}</think>\n\\boxed{{{row['answer']}}}"
