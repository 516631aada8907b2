"""Answer extraction and checking, shared by MMMU evaluation, distillation and RL rewards.

Three layers:

* think/boxed/statement helpers that find the model's final answer in free text;
* the official MMMU parsing and judging rules (our own implementation, faithful to the
  official judgments including their quirks, except where a comment says we differ);
* `verify`, a lenient equivalence (numeric tolerance, LaTeX wrappers, units) for training
  signals, where a missed correct answer costs more than a strict benchmark rule.

Every function here must finish quickly on arbitrary model output: rewards run on every
rollout, possibly off the main thread, where no signal-based timeout can stop them. So the
bound holds by construction: regexes are written so that no input makes them backtrack more
than linearly (no nested or adjacent quantifiers over the same characters, no unanchored
starts inside digit runs), nothing evaluates what it reads (no powers, no big integers),
and the Python-level scans see a capped amount of text: `extract` reads at most the last
MAX_FINAL_CHARS characters of the final part, `verify` judges answers of at most
MAX_ANSWER_CHARS characters. Nothing here raises on odd text.
"""

from __future__ import annotations

import ast
import math
import re
from typing import NamedTuple, Sequence

from r1v3.errors import UserError

QUESTION_TYPES = ("multiple-choice", "open")
METHODS = ("boxed", "statement", "parse", "none")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Far above any real final answer (a 16k-token budget is about 70k characters), small enough
# that the pure-Python scans over it take milliseconds.
MAX_FINAL_CHARS = 100_000
# An "answer" longer than this is a runaway completion, not an answer.
MAX_ANSWER_CHARS = 10_000


class Extraction(NamedTuple):
    """The final answer found in a response and how it was found.

    `answer` is an option letter for multiple choice, a string for open questions, or None
    when nothing usable was found (method "none": a parse failure).
    """

    answer: str | None
    method: str


# --------------------------------------------------------------------------------------
# think tags, \boxed{}, "the answer is"
# --------------------------------------------------------------------------------------


def split_think(text: str) -> tuple[str, str]:
    """Split a response into (reasoning, final).

    The final part is what follows the last `</think>`. An opening `<think>` that is never
    closed (or a new one opened after the last close) means the model ran out of budget
    while thinking: final is "" so that nothing in the half-finished reasoning is scored.
    """
    text = text or ""
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        reasoning = text[:close]
        final = text[close + len(THINK_CLOSE):]
        if THINK_OPEN in final:
            return (reasoning + final).strip(), ""
        opened = reasoning.find(THINK_OPEN)
        if opened >= 0:
            reasoning = reasoning[:opened] + reasoning[opened + len(THINK_OPEN):]
        return reasoning.strip(), final.strip()
    opened = text.find(THINK_OPEN)
    if opened >= 0:
        return text[opened + len(THINK_OPEN):].strip(), ""
    return "", text.strip()


_BOX_MARKERS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces kept), else None.

    If the last one is unbalanced (truncated output) the answer is None rather than an
    earlier box: an earlier box is usually an intermediate result, not the final answer.
    """
    text = text or ""
    end = len(text)
    while True:
        # the later of the two markers before `end`
        best, best_len = -1, 0
        for marker in _BOX_MARKERS:
            pos = text.rfind(marker, 0, end)
            if pos > best:
                best, best_len = pos, len(marker)
        if best < 0:
            return None
        i = best + best_len
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            return _balanced(text, i)
        end = best  # "\boxedfoo" or "\boxed" without a group: look further left


def _balanced(text: str, open_at: int) -> str | None:
    """The content of the brace group opening at `open_at`, or None if it never closes."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # \{ and \} are literal braces in LaTeX, not grouping
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
        i += 1
    return None


# The lead-in is matched literally and every quantifier sits between different
# character classes, so a failed attempt costs at most the length of one run of blanks.
_STATEMENT = re.compile(
    r"(?:final[ \t]+answer|\b(?:the|my)[ \t]+(?:correct[ \t]+|final[ \t]+|best[ \t]+)?answer|\banswer)"
    r"[ \t*]*(?:(?:is|would[ \t]+be|should[ \t]+be)\b[ \t*]*[:：]?|[:：])[ \t*]*([^\n]*)",
    re.IGNORECASE,
)


def answer_statement(text: str) -> str | None:
    """The X of the last explicit "the answer is X" / "Answer: X" / "final answer: X".

    X runs to the end of its line, with markdown emphasis, `$` and a closing full stop
    removed. Statements with nothing after them are skipped.
    """
    last = None
    for match in _STATEMENT.finditer(text or ""):
        value = _trim_statement(match.group(1))
        if value:
            last = value
    return last


def _trim_statement(value: str) -> str:
    value = value.strip().strip("*").strip()
    if value.startswith("$") and value.endswith("$") and len(value) > 1:
        value = value.strip("$").strip()
    # a sentence-ending full stop is not part of the answer ("3.5." -> "3.5")
    while value and value[-1] in ".。!":
        value = value[:-1].rstrip()
    return value.strip("*").strip()


# --------------------------------------------------------------------------------------
# The official MMMU parsing and judging rules
# --------------------------------------------------------------------------------------


def parse_multi_choice(response: str, all_choices: Sequence[str], index2ans: dict) -> str | None:
    """The option letter the official MMMU parser reads from a response, or None.

    Rules, in order: a bracketed letter "(B)"; then a letter standing alone between spaces
    " B "; then, only for responses longer than five words, an option's text appearing in
    the response. With several candidates the official tie rule takes the one occurring
    last in the response.

    Deliberate difference: where the official parser finds nothing it picks a random
    option (seeded), which credits a blank answer with 1/n accuracy on average. We return
    None so the caller records a parse failure, scored as wrong.
    """
    response = response if isinstance(response, str) else ""
    for ch in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(ch)
    padded = f" {response} "

    candidates = [c for c in all_choices if f"({c})" in padded]
    bracketed = bool(candidates)
    by_text = False
    if not candidates:
        candidates = [c for c in all_choices if f" {c} " in padded]
    if not candidates and len(padded.split()) > 5:
        lowered = padded.lower()
        for letter, text in index2ans.items():
            if str(text).lower() in lowered:  # an empty option text matches anything, as officially
                candidates.append(letter)
        by_text = bool(candidates)

    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if by_text:
        lowered = padded.lower()
        positions = [lowered.rfind(str(index2ans.get(c, "")).lower()) for c in candidates]
    elif bracketed:
        positions = [padded.rfind(f"({c})") for c in candidates]
    else:
        positions = [padded.rfind(f" {c} ") for c in candidates]
    # first maximum wins a tie, as the official argmax does
    return candidates[positions.index(max(positions))]


def check_is_number(string: str) -> bool:
    """True if the string reads as a float once commas are dropped (official rule).

    Python's float() is the judge, so "1,2,3" (-> 123), "nan" and "1_000" count as numbers,
    exactly as in the official script.
    """
    try:
        float(string.replace(",", ""))
    except (ValueError, OverflowError):
        return False
    return True


def normalize_str(string: str) -> list:
    """Official normalisation: numbers become floats rounded to 2 decimals, other text is
    lower-cased; a one-character text becomes [" x", "x "] so it only matches as a word edge.
    """
    string = str(string).strip()
    if check_is_number(string):
        return [round(float(string.replace(",", "")), 2)]
    string = string.lower()
    if len(string) == 1:
        return [" " + string, string + " "]
    return [string]


# The official number patterns, anchored so that a digit can only start a match where
# its digit run starts: (?<!\d) (and, for plain numbers, not right after a "." either,
# where the ".5" branch has already been tried). The official patterns may also start
# inside a run, but such a start succeeds only if the start of that same run succeeded
# first, and no match ends inside a run, so the matches are identical; without the
# anchor a long run of digits costs quadratic time.
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?(?<!\d)\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(
    r"-?(?<![\d.])(?:\d+\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"
    # a leading-dot number (".5") may follow a digit: "1.2.3" reads as "1.2" and ".3"
    r"|-?\.\d+(?![eE][+-]?\d+)(?![,\d])"
)


def extract_numbers(string: str) -> list[str]:
    """All numbers in a string, as the official parser finds them: first those with
    thousands commas, then scientific notation, then plain numbers (so order is by kind,
    not by position). Quirk kept: a number glued to letters ("5cm") is not a plain number.
    """
    string = string if isinstance(string, str) else ""
    return (
        _NUM_COMMAS.findall(string)
        + _NUM_SCIENTIFIC.findall(string)
        + _NUM_SIMPLE.findall(string)
    )


_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}


def key_subresponses(response: str) -> list[str]:
    """The official "key sub-responses": per line, the shortest tail after an indicator
    word ("is ", "so ", "therefore ", ...; "=" on the last line only). The whole lower-cased
    response when no line has one.

    Quirk kept: the official code also tries to split on sentence ends followed by a
    capital, but only after lower-casing, so only line breaks ever split.
    """
    response = (response if isinstance(response, str) else "").strip().strip(".").lower()
    lines = response.split("\n")
    keys = []
    for index, line in enumerate(lines):
        indicators = _KEY_INDICATORS + (("=",) if index == len(lines) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in line:
                tail = line.rsplit(indicator, 1)[-1].strip()
                # an empty first hit is replaced by any later one, as officially
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list:
    """Normalised answer candidates of an open response (official rules): the key
    sub-responses, every number inside them, each through `normalize_str`, deduplicated.
    """
    keys = key_subresponses(response)
    raw = list(keys)
    for key in keys:
        raw.extend(extract_numbers(key))
    normalized = []
    for item in raw:
        normalized.extend(normalize_str(item))
    return list(dict.fromkeys(normalized))


def eval_multi_choice(gold, pred) -> bool:
    """Official rule: the parsed letter equals the gold letter (or one of a gold list)."""
    if pred is None:
        return False
    if isinstance(gold, (list, tuple)):
        return pred in gold
    return gold == pred


def eval_open(gold, preds: Sequence) -> bool:
    """Official rule for open answers: a number candidate must equal a gold number (both
    rounded to 2 decimals); a text candidate is right if a gold text is a substring of it.

    Quirk kept: the substring test makes a long candidate that happens to contain the
    gold text correct.
    """
    golds = gold if isinstance(gold, (list, tuple)) else [gold]
    norm_answers = []
    for answer in golds:
        norm_answers.extend(normalize_str(answer))
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(ans, str) and ans in pred for ans in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False


def calculate_ins_level_acc(results: dict) -> float:
    """Item-weighted accuracy over groups {name: {"acc", "n"}} (official "instance level")."""
    total = sum(r["n"] for r in results.values())
    if total == 0:
        return 0.0
    return sum(r["acc"] * r["n"] for r in results.values()) / total


def gold_answer(answer):
    """A gold answer as the rules expect it: a list when the stored string is a Python
    list literal ("['1.2', '1.20']"), else the string itself.
    """
    if isinstance(answer, (list, tuple)):
        return [str(a) for a in answer]
    text = str(answer).strip()
    if text.startswith("[") and text.endswith("]") and len(text) <= MAX_ANSWER_CHARS:
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(value, list) and value:
            return [str(v) for v in value]
    return text


# --------------------------------------------------------------------------------------
# extract: the final answer of a (possibly thinking) model
# --------------------------------------------------------------------------------------


def choices_for(options: Sequence | None) -> tuple[list[str], dict]:
    """Letters and letter->text map for an option list; without options any letter A-Z."""
    if not options:
        letters = [chr(ord("A") + i) for i in range(26)]
        return letters, {}
    letters = [chr(ord("A") + i) for i in range(len(options))]
    # a blank option text is left out: the official text rule would find "" in every response
    # and credit that option (every reader refuses blank options; this keeps scoring safe anyway)
    return letters, {letter: str(opt) for letter, opt in zip(letters, options) if str(opt).strip()}


_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_LONE_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_LEADING_LETTER = re.compile(r"\(([A-Za-z])\)|([A-Z])(?:[.:)]|[ \t]*[-–—])(?=\s)")
_OPTION_WORD = re.compile(r"(?i:the[ \t]+)?(?i:option|choice)[ \t]+\(?([A-Z])\)?(?![A-Za-z])")


def _unwrap(text: str) -> str:
    text = _WRAPPER.sub(r"\1", text)
    text = text.strip()
    for _ in range(4):  # a few layers of $...$ / **...** / quotes
        before = text
        for pair in ("$", "**", "*", '"', "'", "`"):
            if len(text) > 2 * len(pair) - 1 and text.startswith(pair) and text.endswith(pair):
                text = text[len(pair):-len(pair)].strip()
        text = text.rstrip(".,;:!").strip()
        if text == before:
            break
    return text


def _squash(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def option_letter(text: str, all_choices: Sequence[str], index2ans: dict) -> str | None:
    """Map a stated answer ("B", "(b)", "B. Paris", "option B", or an option's text) to its
    letter; falls back to the official parser on what remains; None if nothing fits.
    """
    text = _unwrap(text or "")
    if not text:
        return None
    letter = _strict_letter(text, all_choices, index2ans)
    if letter is not None:
        return letter
    if _LONE_LETTER.fullmatch(text):
        return None  # a single letter that is not an option: do not guess from it
    return parse_multi_choice(text, list(all_choices), index2ans)


def _strict_letter(text: str, all_choices: Sequence[str], index2ans: dict) -> str | None:
    """The letter when `text` is nothing but an answer: a letter, an option's text, or a
    letter leading its option ("B. Paris", "(B) Paris", "option B")."""
    choices = list(all_choices)
    # A lone letter is read as a letter even when an option's text is that letter too
    # (music questions have options like "G", "A", "B"): the prompt asks for letters.
    lone = _LONE_LETTER.fullmatch(text)
    if lone:
        letter = lone.group(1).upper()
        if letter in choices:
            return letter
    # the whole option text next, so that an option "A. Lincoln" is not read as letter A
    squashed = _squash(text)
    for letter in choices:
        if letter in index2ans and _squash(str(index2ans[letter])) == squashed:
            return letter
    if lone:
        return None
    lead = _LEADING_LETTER.match(text) or _OPTION_WORD.match(text)
    if lead:
        letter = next(g for g in lead.groups() if g).upper()
        if letter in choices:
            return letter
    return None


def _check_type(question_type: str) -> None:
    if question_type not in QUESTION_TYPES:
        raise UserError(
            f"question_type must be one of {', '.join(QUESTION_TYPES)}, got {question_type!r}"
        )


def extract(text: str, *, options: Sequence | None = None, question_type: str) -> Extraction:
    """The final answer of a response, from the text after the last `</think>`: the last
    `\\boxed{}`, else the last explicit answer statement, else a parse of that text.
    Multiple-choice answers come back as option letters. A final part longer than
    MAX_FINAL_CHARS is read from its last MAX_FINAL_CHARS characters (the answer is at the end).

    The parse, for multiple choice: a one-line direct answer ("B", "B. blue", "blue"),
    else the official rules. For open questions: the last official key sub-response.
    """
    _check_type(question_type)
    _, final = split_think(text if isinstance(text, str) else "")
    if not final:
        return Extraction(None, "none")
    final = final[-MAX_FINAL_CHARS:]
    if question_type == "multiple-choice":
        choices, index2ans = choices_for(options)
        for method, found in (("boxed", last_boxed(final)), ("statement", answer_statement(final))):
            if found:
                letter = option_letter(found, choices, index2ans)
                if letter is not None:
                    return Extraction(letter, method)
        # A one-line direct answer ("B. blue", "blue") first: the official rules miss
        # "B. blue" (no bracket, no lone " B ") and short option texts (five-word minimum).
        letter = None
        if "\n" not in final:
            letter = _strict_letter(_unwrap(final), choices, index2ans)
        if letter is None:
            letter = parse_multi_choice(final, choices, index2ans)
        return Extraction(letter, "parse") if letter is not None else Extraction(None, "none")
    for method, found in (("boxed", last_boxed(final)), ("statement", answer_statement(final))):
        if found is not None:
            found = _unwrap(found)
            if found:
                return Extraction(found, method)
    keys = key_subresponses(final)
    answer = keys[-1].strip()
    return Extraction(answer, "parse") if answer else Extraction(None, "none")


# --------------------------------------------------------------------------------------
# verify: lenient equivalence for distillation filtering and RL rewards
# --------------------------------------------------------------------------------------

REL_TOL = 1e-4
_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_PLAIN = re.compile(r"[+-]?" + _UNSIGNED)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC = re.compile(r"([+-]?)\\frac\{([^{}]*)\}\{([^{}]*)\}")
_SLASH = re.compile(r"([+-]?" + _UNSIGNED + r")/(" + _UNSIGNED + r")")
_TIMES_TEN = re.compile(r"([+-]?" + _UNSIGNED + r")(?:\\times|\\cdot|\*|×|x)10\^\{?([+-]?\d+)\}?")
# number, optional blank, then a unit made of letters/symbols (no digits first)
_WITH_UNIT = re.compile(r"([^A-Za-zµμΩ°%]*?[0-9.}])[ \t]*([A-Za-zµμΩ°][A-Za-z0-9µμΩ°/^*· \t]{0,23})")
_LATEX_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "~")


def _clean_math(text: str) -> str:
    text = _WRAPPER.sub(r"\1", text)
    for noise in _LATEX_NOISE:
        text = text.replace(noise, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = text.replace("\\%", "%").replace("$", "").replace("−", "-")
    return text.strip().rstrip(".").strip()


def _number(text: str) -> float | None:
    """A single number written as 12, -3.5, 1,234.5, 2e-3, 3\\times10^{4}, 1/2, \\frac{1}{2}
    or 45% (-> 0.45); None for anything else.
    """
    s = "".join(_clean_math(text).split())
    if not s or len(s) > 200:
        return None
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    value = None
    if _PLAIN.fullmatch(s):
        value = float(s)
    elif _THOUSANDS.fullmatch(s):
        value = float(s.replace(",", ""))
    else:
        m = _FRAC.fullmatch(s) or _SLASH.fullmatch(s)
        if m:
            groups = m.groups()
            sign = -1.0 if m.re is _FRAC and groups[0] == "-" else 1.0
            num, den = (groups[1], groups[2]) if m.re is _FRAC else (groups[0], groups[1])
            if _PLAIN.fullmatch(num) and _PLAIN.fullmatch(den) and float(den) != 0:
                value = sign * float(num) / float(den)
        else:
            m = _TIMES_TEN.fullmatch(s)
            if m and len(m.group(2)) <= 4:
                try:
                    value = float(m.group(1)) * 10.0 ** int(m.group(2))
                except OverflowError:
                    return None
    if value is None or not math.isfinite(value):
        return None
    return value / 100.0 if percent else value


def _decimals(text: str) -> int | None:
    s = "".join(_clean_math(text).split())
    if _PLAIN.fullmatch(s) and "e" not in s.lower():
        return len(s.split(".", 1)[1]) if "." in s else 0
    return None


def _numbers_match(pred: float, gold: float, gold_text: str) -> bool:
    if math.isclose(pred, gold, rel_tol=REL_TOL, abs_tol=1e-9):
        return True
    # A prediction more precise than a gold given to 2+ decimals ("3.14159" for "3.14")
    # is right; golds with fewer decimals may be exact, so they get no such slack.
    places = _decimals(gold_text)
    return places is not None and 2 <= places <= 6 and round(pred, places) == round(gold, places)


def _split_unit(text: str) -> tuple[str, str] | None:
    m = _WITH_UNIT.fullmatch(_clean_math(text))
    if not m:
        return None
    return m.group(1), " ".join(m.group(2).lower().split())


def _norm_text(text: str) -> str:
    text = _clean_math(text).lower()
    text = " ".join(text.split())
    for article in ("the ", "a ", "an "):
        if text.startswith(article):
            text = text[len(article):]
    return text.strip(" .")


def _equivalent_open(pred: str, gold: str) -> bool:
    if _norm_text(pred) == _norm_text(gold):
        return True
    if _norm_text(pred).replace(" ", "") == _norm_text(gold).replace(" ", ""):
        return True
    gold_value, pred_value = _number(gold), _number(pred)
    if gold_value is not None and pred_value is not None:
        if _numbers_match(pred_value, gold_value, gold):
            return True
        # "45%" against "45": the percent sign on one side only is a matter of notation
        gold_pct, pred_pct = gold.rstrip().endswith("%"), pred.rstrip().endswith("%")
        if gold_pct != pred_pct:
            if gold_pct:
                return _numbers_match(pred_value / 100.0, gold_value, gold)
            return _numbers_match(pred_value * 100.0, gold_value, gold)
        return False
    # numbers with units: units must agree when both sides state one
    gold_split, pred_split = _split_unit(gold), _split_unit(pred)
    gold_num = _number(gold_split[0]) if gold_split else gold_value
    pred_num = _number(pred_split[0]) if pred_split else pred_value
    if gold_num is None or pred_num is None:
        return False
    if gold_split and pred_split and gold_split[1] != pred_split[1]:
        return False
    return _numbers_match(pred_num, gold_num, gold_split[0] if gold_split else gold)


def verify(prediction, gold, *, question_type: str, options: Sequence | None = None) -> bool:
    """Is an extracted answer equivalent to the gold one?

    Multiple choice: letters compare case-insensitively (a prediction or gold written as
    the option's text is mapped to its letter). Open: normalised text equality, or numeric
    equality within a relative tolerance of 1e-4 (also fractions, percentages, scientific
    notation, and numbers with matching units). A list gold accepts any of its members.
    A prediction longer than MAX_ANSWER_CHARS is wrong, and so is any comparison with a gold
    that long.
    """
    _check_type(question_type)
    if prediction is None:
        return False
    prediction = str(prediction)
    if len(prediction) > MAX_ANSWER_CHARS:
        return False
    golds = gold_answer(gold)
    golds = golds if isinstance(golds, list) else [golds]
    if question_type == "multiple-choice":
        choices, index2ans = choices_for(options)
        letter = option_letter(prediction, choices, index2ans)
        if letter is None:
            return False
        for g in golds:
            if len(g) > MAX_ANSWER_CHARS:
                continue
            g_letter = option_letter(g, choices, index2ans)
            if g_letter is not None and g_letter.upper() == letter.upper():
                return True
        return False
    pred = _unwrap(prediction)
    return any(len(g) <= MAX_ANSWER_CHARS and _equivalent_open(pred, _unwrap(g)) for g in golds)
