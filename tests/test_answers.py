import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1v3 import UserError
from r1v3.answers import (
    Extraction,
    answer_statement,
    check_is_number,
    eval_multi_choice,
    eval_open,
    extract,
    extract_numbers,
    gold_answer,
    key_subresponses,
    last_boxed,
    normalize_str,
    option_letter,
    parse_multi_choice,
    parse_open,
    split_think,
    verify,
)

LETTERS = ["A", "B", "C", "D"]
COLOURS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
OPTIONS = list(COLOURS.values())


# --- think tags ---------------------------------------------------------------------


def test_split_think_takes_text_after_last_close():
    assert split_think("<think>x</think> The answer is B.") == ("x", "The answer is B.")
    assert split_think("a</think>b</think> final ") == ("a</think>b", "final")
    assert split_think("no tags at all") == ("", "no tags at all")


def test_split_think_unfinished_thinking_has_no_final():
    assert split_think("<think>still going \\boxed{B}") == ("still going \\boxed{B}", "")
    # thinking re-opened after the last close and never finished
    assert split_think("<think>a</think> b <think> c")[1] == ""


def test_split_think_close_without_open():
    # chat templates often put <think> in the prompt, so only </think> is generated
    assert split_think("reasoning</think>\\boxed{3}") == ("reasoning", "\\boxed{3}")


# --- \boxed{} -----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{1} then \boxed{2}", "2"),
    (r"\boxed{{a}{b{c}}}", "{a}{b{c}}"),
    (r"\fbox{7}", "7"),
    (r"\boxed{1} and \fbox{2}", "2"),
    (r"\boxed {4}", "4"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    (r"\boxed{}", ""),
    ("no box here", None),
    (r"\boxed{1} then \boxed{2", None),  # a truncated last box: no answer, not the earlier one
    (r"\boxed{x} \boxedfoo", "x"),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


# --- answer statements --------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The answer is 3.5.", "3.5"),
    ("Answer: B", "B"),
    ("**Final Answer:** (C) 42.\nmore text", "(C) 42"),
    ("final answer is $x^2$", "x^2"),
    ("The correct answer would be: blue", "blue"),
    ("Answer: A\n...\nAnswer: C", "C"),
    ("the answers are many", None),
    ("Answer:\n", None),
    ("nothing stated", None),
])
def test_answer_statement(text, expected):
    assert answer_statement(text) == expected


# --- official multiple-choice parsing -----------------------------------------------


@pytest.mark.parametrize("response, expected", [
    ("(B)", "B"),
    ("B", "B"),
    ("B.", "B"),  # surrounding punctuation is stripped first
    ("The answer is C because", "C"),
    ("I think (A) or maybe (C) is it", "C"),  # several bracketed: the last one in the text
    ("A is wrong, the answer is (D)", "D"),  # brackets win over bare letters
    ("Between A and C I pick C", "C"),  # several bare letters: the last one
    ("the colour of the square is clearly green", "C"),  # option text, more than 5 words
    ("green", None),  # option text alone: 5 words or fewer, so not by the official rules
    ("I cannot tell from the picture", None),  # nothing: official random pick, here None
    ("", None),
])
def test_parse_multi_choice(response, expected):
    assert parse_multi_choice(response, LETTERS, COLOURS) == expected


def test_parse_multi_choice_text_tie_takes_the_first_option_at_the_last_position():
    # both texts end at the same place: the official argmax keeps the first candidate
    index2ans = {"A": "blue", "B": "blue green"}
    assert parse_multi_choice("i would say the colour here is blue green", ["A", "B"], index2ans) == "A"
    # otherwise the text found last wins
    assert parse_multi_choice("not red, it is actually blue here", ["A", "B"], {"A": "blue", "B": "red"}) == "A"


def test_parse_multi_choice_is_case_sensitive_for_letters():
    assert parse_multi_choice("a", LETTERS, COLOURS) is None


# --- official open parsing -------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    # the last comma group is found again as a plain number (official quirk)
    ("It costs 1,234,567 dollars", ["1,234,567", "567"]),
    # scientific numbers, then their pieces again as plain numbers (official quirk)
    ("1.5e3 and 2E-4", ["1.5e3", "2E-4", "1", "3", "-4"]),
    ("-3.5 and .25 and 7", ["-3.5", ".25", "7"]),
    ("5cm", []),  # glued to letters: not a plain number (official quirk)
    ("1.2.3", ["1.2", ".3"]),
    ("1,234.5", ["1,234", "234.5"]),  # by kind: comma form first, then plain (official quirk)
])
def test_extract_numbers(text, expected):
    assert extract_numbers(text) == expected


def test_check_is_number_and_normalize_str():
    assert check_is_number("1,234.5") and check_is_number("1e3") and not check_is_number("abc")
    assert normalize_str(" 1,234.567 ") == [1234.57]
    assert normalize_str("Paris") == ["paris"]
    assert normalize_str("A") == [" a", "a "]  # one character: only matches at a word edge


def test_key_subresponses():
    # per line the shortest tail: "12 apples" (after "is ") beats "the total is 12 apples"
    assert key_subresponses("First we add.\nSo the total is 12 apples.") == ["12 apples"]
    assert key_subresponses("x + 1 = 5\nhence x = 4") == ["4"]  # "=" counts on the last line only
    assert key_subresponses("Paris") == ["paris"]


def test_parse_open_candidates():
    preds = parse_open("The area is 1,234.5 square meters.")
    assert "1,234.5 square meters" in preds and 1234.0 in preds and 234.5 in preds
    assert 1500.0 in parse_open("so x = 1.5e3")
    preds = parse_open("The rate is 45%")
    assert "45%" in preds and 45.0 in preds


@pytest.mark.parametrize("gold, response, expected", [
    ("42", "The answer is 42.", True),
    ("42", "The answer is 43.", False),
    ("1500", "so x = 1.5e3", True),
    ("1,234", "The total is 1234", True),
    ("3.14159", "The value is 3.14", True),  # both rounded to 2 decimals
    ("45%", "The rate is 45%", True),
    ("45", "The rate is 45%", True),
    ("cat", "It is a black cat", True),  # gold text is a substring of the candidate
    ("a", "It is a", True),  # one character on both sides becomes " a" / "a "
    (["24", "24.0"], "Therefore 24", True),
    ("Paris", "London", False),
])
def test_eval_open(gold, response, expected):
    assert eval_open(gold, parse_open(response)) is expected


def test_eval_multi_choice():
    assert eval_multi_choice("B", "B") and not eval_multi_choice("B", "C")
    assert eval_multi_choice(["A", "B"], "B")
    assert not eval_multi_choice("B", None)


def test_gold_answer_reads_list_literals():
    assert gold_answer("['1.2', '1.20']") == ["1.2", "1.20"]
    assert gold_answer("[broken") == "[broken"
    assert gold_answer(" B ") == "B"


# --- extract --------------------------------------------------------------------------


def mc(text):
    return extract(text, options=OPTIONS, question_type="multiple-choice")


@pytest.mark.parametrize("text, expected", [
    (r"<think>maybe \boxed{A}</think> So \boxed{B}", Extraction("B", "boxed")),
    (r"\boxed{\text{(c)}}", Extraction("C", "boxed")),
    (r"\boxed{B.}", Extraction("B", "boxed")),
    (r"\boxed{green}", Extraction("C", "boxed")),  # the option's text
    ("Answer: (D) yellow", Extraction("D", "statement")),
    ("The answer is green.", Extraction("C", "statement")),
    ("B. blue", Extraction("B", "parse")),  # a one-line direct answer
    ("blue", Extraction("B", "parse")),
    ("I think (A) or maybe (C) hmm", Extraction("C", "parse")),
    (r"\boxed{E} and nothing else", Extraction(None, "none")),  # E is not an option
    ("<think>I was thinking \\boxed{B}", Extraction(None, "none")),  # unfinished think
    ("<think>done</think>", Extraction(None, "none")),
    ("I cannot tell", Extraction(None, "none")),
])
def test_extract_multiple_choice(text, expected):
    assert mc(text) == expected


def test_extract_boxed_letter_wins_over_equal_option_text():
    # music options are often note names: a lone letter is read as a letter
    got = extract(r"\boxed{B}", options=["G", "A", "B", "C"], question_type="multiple-choice")
    assert got == Extraction("B", "boxed")


def test_extract_only_looks_after_think():
    text = "<think>The answer is (A). \\boxed{A}</think>\nThe answer is (B)."
    assert mc(text) == Extraction("B", "statement")


@pytest.mark.parametrize("text, expected", [
    (r"\boxed{\frac{1}{2}}", Extraction(r"\frac{1}{2}", "boxed")),
    (r"\boxed{\text{12 cm}}", Extraction("12 cm", "boxed")),
    ("Final answer: 7", Extraction("7", "statement")),
    ("First we add.\nSo the total is 12", Extraction("12", "parse")),
    ("<think>never finished", Extraction(None, "none")),
    ("   ", Extraction(None, "none")),
])
def test_extract_open(text, expected):
    assert extract(text, question_type="open") == expected


def test_extract_rejects_unknown_question_type():
    with pytest.raises(UserError, match="question_type"):
        extract("B", question_type="mc")


def test_option_letter_forms():
    assert option_letter("(b)", LETTERS, COLOURS) == "B"
    assert option_letter("Option C", LETTERS, COLOURS) == "C"
    assert option_letter("**D**", LETTERS, COLOURS) == "D"
    assert option_letter("$\\text{A}$", LETTERS, COLOURS) == "A"
    assert option_letter("Z", LETTERS, COLOURS) is None
    # an option whose text starts like a letter answer is matched as text first
    assert option_letter("A. Lincoln", ["A", "B"], {"A": "G. Washington", "B": "A. Lincoln"}) == "B"


# --- verify ---------------------------------------------------------------------------


@pytest.mark.parametrize("pred, gold, expected", [
    (r"\frac{1}{2}", "0.5", True),
    (r"\dfrac{3}{4}", "0.75", True),
    ("1/3", "0.33333", True),
    ("0.333", "1/3", False),  # outside the 1e-4 relative tolerance
    ("1,234", "1234", True),
    ("1.5e3", "1500", True),
    (r"3 \times 10^{4}", "30000", True),
    ("45%", "0.45", True),
    ("45", "45%", True),
    ("12 cm", "12", True),
    ("12 cm", "12 m", False),
    ("12.0001", "12", True),
    ("12.4", "12", False),
    ("3.14159", "3.14", True),  # more precise than a gold given to 2 decimals
    ("The Eiffel Tower", "eiffel tower", True),
    ("$x^2$", "x^2", True),
    ("Paris", "London", False),
    ("7", ["6", "7"], True),
    ("7", "['6', '7']", True),
    (None, "7", False),
])
def test_verify_open(pred, gold, expected):
    assert verify(pred, gold, question_type="open") is expected


@pytest.mark.parametrize("pred, gold, expected", [
    ("b", "B", True),
    ("(B)", "B", True),
    ("blue", "B", True),
    ("B", "blue", True),  # a gold written as the option's text
    ("C", "B", False),
    ("nonsense", "B", False),
])
def test_verify_multiple_choice(pred, gold, expected):
    assert verify(pred, gold, question_type="multiple-choice", options=OPTIONS) is expected


def test_verify_multiple_choice_without_options_compares_letters():
    assert verify("c", "C", question_type="multiple-choice")
    assert not verify("D", "C", question_type="multiple-choice")


# --- robustness: never raise, bounded time ----------------------------------------------

LIMIT = 0.05  # seconds per call on up to 5k characters

PATHOLOGICAL = [
    "{" * 5000,
    "}" * 5000,
    "\\" * 5000,
    "\\boxed{" * 700,
    "\\boxed" * 800,
    "\\boxed{" + "{" * 4990,
    "\\frac{" * 800,
    "1" * 5000,
    "1" * 4999 + "a",
    "1" * 4999 + ",",
    "1." + "1" * 4990 + "e",
    "1," * 2500,
    ".1" * 2500,
    "-" * 5000,
    "(A)" * 1666,
    " A " * 1666,
    "answer" + " " * 4990 + "x",
    "answer is " * 500,
    "The answer is" + "*" * 4980,
    "<think>" * 700,
    "</think>" * 600,
    "<image 1>" * 500,
    "\n" * 5000,
    "is " * 1666,
    "= " * 2500,
    "1 " * 2500 + "cm",
    "9" * 300 + " " * 4000 + "m",
    "$" * 5000,
    "**" * 2500,
    "\\text{" * 800,
]


def _all_calls(text):
    yield lambda: split_think(text)
    yield lambda: last_boxed(text)
    yield lambda: answer_statement(text)
    yield lambda: extract(text, options=OPTIONS, question_type="multiple-choice")
    yield lambda: extract(text, question_type="multiple-choice")
    yield lambda: extract(text, question_type="open")
    yield lambda: parse_multi_choice(text, LETTERS, COLOURS)
    yield lambda: parse_open(text)
    yield lambda: eval_open(text[:50], parse_open(text))
    yield lambda: verify(text, "0.5", question_type="open")
    yield lambda: verify(text, text, question_type="open")
    yield lambda: verify(text, "B", question_type="multiple-choice", options=OPTIONS)


def _check_fast(text):
    for call in _all_calls(text):
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        assert elapsed < LIMIT, f"{elapsed * 1000:.1f} ms on {text[:40]!r}..."


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_inputs_are_fast(text):
    _check_fast(text)


_TOKENS = st.sampled_from([
    "\\boxed{", "\\fbox{", "{", "}", "\\", "(", ")", "A", "B", "(C)", " D ", "1", "9", ".", ",",
    "e", "E", "-", "+", "%", "$", " ", "\n", "<think>", "</think>", "Answer:", "the answer is ",
    "is ", "= ", "\\frac{1}{2}", "\\text{", "cm", "blue", "x", "×10^", "*", "<image 2>",
])


@st.composite
def texts(draw):
    if draw(st.booleans()):
        return draw(st.text(max_size=5000))
    pieces = draw(st.lists(_TOKENS, max_size=400))
    repeat = draw(st.integers(min_value=1, max_value=12))
    return ("".join(pieces) * repeat)[:5000]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(texts())
def test_property_never_raises_and_is_fast(text):
    _check_fast(text)


# --- caps that bound the work on runaway output ---------------------------------------


def test_extract_reads_only_the_end_of_a_huge_final_part():
    from r1v3.answers import MAX_FINAL_CHARS

    filler = "word " * (MAX_FINAL_CHARS // 5)
    assert extract("<think>t</think>" + filler + r"\boxed{7}", question_type="open") == Extraction("7", "boxed")
    # a box further back than the cap is out of sight: the last words are the parse
    far = extract(r"<think>t</think>\boxed{7}" + filler + "so 8", question_type="open")
    assert far == Extraction("8", "parse")


def test_verify_refuses_overlong_answers():
    from r1v3.answers import MAX_ANSWER_CHARS

    padded = "7" + "~" * MAX_ANSWER_CHARS  # LaTeX spaces: equal to "7" once cleaned
    assert verify(padded[:9], "7", question_type="open") and verify("7", padded[:9], question_type="open")
    assert not verify(padded, "7", question_type="open")
    assert not verify("7", padded, question_type="open")
    assert not verify("B" + " " * MAX_ANSWER_CHARS, "B", question_type="multiple-choice", options=OPTIONS)
    # a huge list literal is not parsed: it stays one (wrong) string
    huge = "['7', '" + "8" * MAX_ANSWER_CHARS + "']"
    assert gold_answer(huge) == huge
