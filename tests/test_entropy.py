import json
import math
import string

import pytest
import torch
from PIL import Image, ImageDraw

from r1v3 import entropy as E
from r1v3 import generation, stats
from r1v3.errors import UserError
from r1v3.generation import Request
from r1v3.models import build_tiny, build_tiny_llm, tiny_tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny matmuls gain nothing from a second thread on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- entropy ----------------------------------------------------------------------------------


def test_entropy_uniform_is_log_v_and_two_point_by_hand():
    for v in (2, 7, 1000):
        assert E.entropy(torch.full((v,), 3.5)).item() == pytest.approx(math.log(v), abs=1e-5)
    # two-point distribution, the other tokens masked to -inf: no NaN from 0 * log 0
    logits = torch.full((2, 50), float("-inf"))
    logits[0, 3], logits[0, 9] = math.log(0.3), math.log(0.7)
    logits[1, 0] = 5.0  # one certain token
    h = E.entropy(logits)
    assert h.shape == (2,)
    assert h[0].item() == pytest.approx(-(0.3 * math.log(0.3) + 0.7 * math.log(0.7)), abs=1e-6)
    assert h[1].item() == 0.0


def test_entropy_is_float32_from_bf16_logits_and_chunked():
    torch.manual_seed(0)
    logits = (torch.randn(3, generation._CHUNK_ROWS + 5, 300) * 4).to(torch.bfloat16)
    h = E.entropy(logits)
    assert h.dtype == torch.float32 and h.shape == (3, generation._CHUNK_ROWS + 5)
    p = torch.softmax(logits.double(), -1)
    reference = -(p * p.log()).sum(-1)
    assert torch.allclose(h.double(), reference, atol=1e-5)


def test_trim_at_eos():
    assert E.trim_at_eos([5, 6, 2, 0, 0], [2, 9]) == [5, 6, 2]
    assert E.trim_at_eos(torch.tensor([5, 6, 7]), [2]) == [5, 6, 7]


# --- critical positions over tokenizers that split "Wait" differently -------------------------


def bpe_tokenizer():
    """The project's byte-level BPE: " Wait", " Hmm" and " Alternatively" are single tokens."""
    return tiny_tokenizer(chat_template=None)


def char_tokenizer():
    """Byte-level with no merges: every byte its own token, "Wait" is 4 tokens, "é" is 2."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def piece_tokenizer():
    """SentencePiece-style (Metaspace) BPE where "," merges with the next letter (",W"), "Alternatively"
    is "▁Alter" + "natively", and the think tags are special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["▁Hmm", ",W", "▁Alter", "natively", '."W', "▁wait"]
    merges, vocab = [], {c: i for i, c in enumerate("▁" + string.ascii_letters + string.digits + string.punctuation)}
    for w in words:
        for k in range(2, len(w) + 1):
            if w[:k] not in vocab:
                merges.append((w[: k - 1], w[k - 1]))
                vocab[w[:k]] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<think>", "</think>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def found(tok, text, **kw):
    ids = tok.encode(text, add_special_tokens=False)
    crit = E.find_critical(tok, ids, **kw)
    decoded = E.decode(tok, ids)
    for c in crit:  # the offset points at the word in the decoded completion
        assert decoded[c.char : c.char + len(c.word)].casefold() == c.word.casefold()
    return ids, crit


def test_bpe_tokenizer_word_is_one_token_with_its_space():
    tok = bpe_tokenizer()
    ids, crit = found(tok, "<think> Hmm, so. Wait, no. Alternatively, await Waiting wait </think> Wait, Hmm")
    tokens = tok.convert_ids_to_tokens(ids)
    assert [(tokens[c.index], c.word) for c in crit] == [
        ("ĠHmm", "Hmm"), ("ĠWait", "Wait"), ("ĠAlternatively", "Alternatively")
    ]  # fmt: skip
    # "ĠWait" is also the first token of " Waiting" and of the answer after </think>: neither counts
    assert tokens.count("ĠWait") == 3 and "ing" in tokens


def test_char_tokenizer_position_is_the_first_of_four_tokens_after_multibyte_chars():
    tok = char_tokenizer()
    body = ' café, "Wait" Hmm. Hmmm Waits Alternatively'
    ids, crit = found(tok, "<think>" + body)  # unclosed: runs to the end
    assert len(ids) == 1 + len(body.encode())  # really one token per byte
    # the token of a char is <think> + the UTF-8 bytes before it: independent of the decoder
    expected = [(1 + len(body[: body.index(w)].encode()), w) for w in ("Wait", "Hmm", "Alternatively")]
    assert [(c.index, c.word) for c in crit] == expected
    assert tok.convert_ids_to_tokens([ids[crit[0].index]]) == ["W"]


def test_merged_punctuation_and_split_word_map_to_the_token_that_begins_the_word():
    tok = piece_tokenizer()
    ids, crit = found(tok, '<think> Hmm,Wait. Alternatively."Wait wait</think>Hmm')
    tokens = tok.convert_ids_to_tokens(ids)
    assert [(tokens[c.index], c.word) for c in crit] == [
        ("▁Hmm", "Hmm"), (",W", "Wait"), ("▁Alter", "Alternatively"), ('."W', "Wait")
    ]  # fmt: skip
    assert tokens[tokens.index("▁Alter") + 1] == "natively"
    # case-insensitive: lower-case "wait" counts too, under the configured spelling
    _, crit = found(tok, '<think> Hmm,Wait. Alternatively."Wait wait</think>Hmm', case_sensitive=False)
    assert [(tokens[c.index], c.word) for c in crit][-1] == ("▁wait", "Wait")


@pytest.mark.parametrize("make", [bpe_tokenizer, char_tokenizer, piece_tokenizer])
def test_linear_pass_and_prefix_bisection_agree(make, monkeypatch):
    tok = make()
    cafe = "cafe" if make is piece_tokenizer else "café"  # the piece vocabulary is ASCII
    text = f'<think> Hmm,Wait. {cafe} Alternatively."Wait (Wait) Hmm</think>'
    ids = tok.encode(text, add_special_tokens=False)
    assert E._incremental_ends(tok, ids, E.decode(tok, ids)) is not None  # the fast path is the one taken
    fast = E.find_critical(tok, ids)
    monkeypatch.setattr(E, "_incremental_ends", lambda *a: None)  # what a tokenizer whose pieces drift gets
    assert E.find_critical(tok, ids) == fast
    assert [c.word for c in fast] == ["Hmm", "Wait", "Alternatively", "Wait", "Wait", "Hmm"]


@pytest.mark.parametrize(
    "text, think_open, words",
    [
        ("Wait, Hmm", False, []),  # no think block at all
        ("Wait, Hmm", True, ["Wait", "Hmm"]),  # the chat template opened it in the prompt
        ("Wait, Hmm </think> Wait", False, ["Wait", "Hmm"]),  # closed only: opened by the template
        ("Hmm <think> Wait Alternatively </think> Hmm", False, ["Wait", "Alternatively"]),
        ("<think> awaited, Waiting, WAIT, wait, Hmmm, Hmm_ </think>", False, []),
    ],
)
def test_think_block_and_word_boundaries(text, think_open, words):
    tok = bpe_tokenizer()
    _, crit = found(tok, text, think_open=think_open)
    assert [c.word for c in crit] == words


def test_configurable_words_and_their_checks():
    tok = bpe_tokenizer()
    _, crit = found(tok, "<think> So the answer, but let me check. So", words=["So", "check"])
    assert [c.word for c in crit] == ["So", "check", "So"]
    for bad in ("Wait", [], ["Wait", "wait"], [" Wait"], [""]):
        with pytest.raises(UserError):
            E.check_words(bad)


# --- the teacher-forced pass against generate's own logits -------------------------------------


def image():
    im = Image.new("RGB", (60, 40), "white")
    ImageDraw.Draw(im).rectangle([5, 5, 30, 30], fill="red")
    return im


def tiny_text_lm():
    return build_tiny_llm(seed=3)


def sharpened(model_processor):
    """A random model's distributions are all near-uniform (entropy ~log V everywhere, so a shifted
    position would still match); larger output weights spread its entropies over several nats."""
    model, processor = model_processor
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)
    return model, processor


@pytest.mark.parametrize("family", ["internvl", "qwen2_vl", "idefics3", "llava", "text"])
def test_teacher_forced_entropies_match_generate_logits(family):
    model, processor = sharpened(tiny_text_lm() if family == "text" else build_tiny(family))
    images = [] if family == "text" else [image()]
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": "How many shapes? Wait, think."}]
    request = Request("q1", [{"role": "user", "content": content}], images)
    text = E.prompt_text(processor, request)
    if family == "text":
        inputs = processor([text], add_special_tokens=False, return_tensors="pt")
    else:
        inputs = processor(text=[text], images=images, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True,
            eos_token_id=processor.eos_token_id if family == "text" else processor.tokenizer.eos_token_id,
        )  # fmt: skip
    n_prompt = inputs["input_ids"].shape[1]
    ids = E.trim_at_eos(out.sequences[0, n_prompt:], [model.generation_config.eos_token_id])
    from_generate = E.step_entropies(out.logits)[: len(ids)]
    got_prompt, forced = E.teacher_forced_entropies(model, processor, text, ids, images)
    assert got_prompt == n_prompt and len(forced) == len(ids) == 12
    assert max(abs(a - b) for a, b in zip(forced, from_generate)) < 1e-4
    assert max(forced) - min(forced) > 0.5
    record = E.make_record(model, processor, request, ids, high_threshold=5.0)
    assert record["token_entropy"] == pytest.approx(sum(from_generate) / len(ids), abs=1e-4)
    assert record["n_high"] == sum(e > 5.0 for e in from_generate)


def test_record_critical_entropy_and_recompute_round_trip(tmp_path):
    model, processor = sharpened(build_tiny("internvl"))
    tok = processor.tokenizer
    content = [{"type": "image"}, {"type": "text", "text": "Count."}]
    request = Request("r7", [{"role": "user", "content": content}], [image()])
    answer = "<think> Count. Wait, two. Hmm, or Alternatively three. </think> 2<|im_end|>"
    completion = tok.encode(answer, add_special_tokens=False)
    record = E.make_record(model, processor, request, completion, sample=1)
    assert [c["word"] for c in record["critical"]] == ["Wait", "Hmm", "Alternatively"]
    # each entropy is the distribution before its token, from an independent full forward pass
    text = E.prompt_text(processor, request)
    full = processor(text=[text], images=[image()], add_special_tokens=False, return_tensors="pt")
    n_prompt = full["input_ids"].shape[1]
    full["input_ids"] = torch.cat([full["input_ids"], torch.tensor([completion])], 1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    with torch.inference_mode():
        logits = model(**full).logits[0].double()
    for c in record["critical"]:
        p = torch.softmax(logits[n_prompt + c["index"] - 1], -1)
        assert c["entropy"] == pytest.approx(-(p * p.log()).sum().item(), abs=1e-4)
        assert completion[c["index"]] == tok.convert_tokens_to_ids("Ġ" + c["word"])
    # through probe.jsonl and back: the same figures from one forward pass
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps(record) + "\n\n")
    (again,) = E.read_records(path)
    fresh = E.recompute(model, processor, again, images=[image()])
    where = lambda r: [(c["index"], c["word"], c["char"]) for c in r["critical"]]  # noqa: E731
    assert where(fresh) == where(record)
    assert [c["entropy"] for c in fresh["critical"]] == pytest.approx([c["entropy"] for c in record["critical"]], abs=1e-5)
    assert fresh["token_entropy"] == pytest.approx(record["token_entropy"], abs=1e-5)
    with pytest.raises(UserError, match="takes 1 images, 0 given"):
        E.recompute(model, processor, again)
    with pytest.raises(UserError, match="record says 3:"):
        E.recompute(model, processor, dict(again, prompt_tokens=3), images=[image()])
    with pytest.raises(UserError, match="vocabulary"):
        E.recompute(model, processor, dict(again, generated_ids=[5, 10**6], critical=[], n_high=0), images=[image()])


def test_bad_records_are_one_line_errors(tmp_path):
    good = {
        "version": 1, "id": "a", "sample": 0, "prompt_text": "p", "prompt_tokens": 3, "n_images": 0,
        "generated_ids": [4, 5], "words": ["Wait"], "case_sensitive": True, "think_open": False,
        "critical": [{"index": 1, "word": "Wait", "char": 0, "entropy": 1.0}],
        "token_entropy": 1.0, "high_threshold": 0.672, "n_high": 1,
    }  # fmt: skip
    assert E.check_record(good) is good
    for change, key in [
        ({"generated_ids": ["4"]}, "generated_ids"),
        ({"generated_ids": []}, "generated_ids"),
        ({"critical": [{"index": 2, "word": "Wait", "entropy": 1.0}]}, "critical"),
        ({"n_high": 3}, "n_high"),
        ({"sample": True}, "sample"),
        ({"version": 2}, "version"),
    ]:
        with pytest.raises(UserError, match=key) as e:
            E.check_record(dict(good, **change), "probe.jsonl line 4")
        assert "\n" not in str(e.value) and str(e.value).startswith("probe.jsonl line 4")
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(UserError, match="line 2"):
        E.read_records(path)


# --- a checkpoint's figures -------------------------------------------------------------------


def record(rid, n_tokens, mean, n_high, critical, **kw):
    base = {
        "version": 1, "id": rid, "sample": 0, "prompt_text": "p", "prompt_tokens": 3, "n_images": 0,
        "generated_ids": list(range(n_tokens)), "words": ["Wait", "Hmm", "Alternatively"], "case_sensitive": True,
        "think_open": False, "token_entropy": mean, "high_threshold": 0.672, "n_high": n_high,
        "critical": [{"index": i, "word": w, "char": i, "entropy": h} for i, (w, h) in enumerate(critical)],
    }  # fmt: skip
    return dict(base, **kw)


def test_summarize_by_hand():
    records = [record("a", 4, 1.0, 1, [("Wait", 2.0), ("Hmm", 1.0)]), record("b", 6, 2.0, 3, [("Wait", 3.0)])]
    s = E.summarize(records)
    assert s["critical_entropy"] == pytest.approx(2.0) and s["critical_count"] == 3
    assert s["per_word"] == {
        "Wait": {"entropy": 2.5, "count": 2}, "Hmm": {"entropy": 1.0, "count": 1},
        "Alternatively": {"entropy": None, "count": 0},
    }  # fmt: skip
    assert s["token_entropy"] == pytest.approx((4 * 1.0 + 6 * 2.0) / 10) and s["tokens"] == 10
    assert s["high_entropy_share"] == pytest.approx(0.4)
    assert E.summarize([record("c", 2, 0.5, 0, [])])["critical_entropy"] is None
    with pytest.raises(UserError, match="high_threshold"):
        E.summarize([records[0], dict(records[1], high_threshold=2.0)])


# --- Spearman ---------------------------------------------------------------------------------


def test_spearman_exact_for_small_n():
    rho, p = stats.spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 120)  # the two perfect pairings of 5! orders
    rho, p = stats.spearman([0.1, 0.5, 0.3, 0.9], [4, 1, 3, 0])
    assert rho == pytest.approx(-1.0) and p == pytest.approx(2 / 24)
    # ties get average ranks: y ranks 1.5 1.5 3 4 -> rho = 4.5 / sqrt(5 * 4.5); 4 of 24 pairings reach |rho|
    rho, p = stats.spearman([1, 2, 3, 4], [7, 7, 8, 9])
    assert rho == pytest.approx(3 / math.sqrt(10)) and p == pytest.approx(4 / 24)
    assert stats.ranks([3, 1, 3, 2, 3]) == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert all(math.isnan(v) for v in stats.spearman([1, 2, 3], [5, 5, 5]))


def _t_pvalue_even_df(t, df):
    """Closed form of the two-sided t p-value for even df (a finite series in cos(theta))."""
    theta = math.atan(t / math.sqrt(df))
    term, total = 1.0, 1.0
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * math.cos(theta) ** 2
        total += term
    return 1 - math.sin(theta) * total


def test_t_pvalue_against_closed_forms_and_tables():
    for t in (0.3, 1.0, 2.5, 10.0):
        assert stats.t_pvalue(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-10)  # Cauchy
        for df in (2, 8, 30):
            assert stats.t_pvalue(t, df) == pytest.approx(_t_pvalue_even_df(t, df), abs=1e-10)
    assert stats.t_pvalue(2.228139, 10) == pytest.approx(0.05, abs=1e-5)  # the textbook 97.5% quantile
    assert stats.t_pvalue(0.0, 5) == pytest.approx(1.0)


def test_spearman_t_approximation_for_larger_n():
    x = list(range(10))
    y = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]  # each pair swapped: sum d^2 = 10
    rho, p = stats.spearman(x, y)
    assert rho == pytest.approx(1 - 6 * 10 / (10 * 99))
    t = rho * math.sqrt(8 / (1 - rho**2))
    assert p == pytest.approx(_t_pvalue_even_df(t, 8), rel=1e-8) and p < 1e-3
    assert stats.spearman(x, x[::-1]) == (pytest.approx(-1.0), 0.0)
    with pytest.raises(UserError, match="pairs"):
        stats.spearman([1, 2], [1])
    with pytest.raises(UserError, match="finite"):
        stats.spearman([1, 2, float("nan")], [1, 2, 3])


@pytest.mark.parametrize("family", ["internvl", "qwen2_vl", "text"])
def test_entropies_recorded_while_generating_match_teacher_forced(family):
    """What select-ckpt reads: TransformersBackend(entropies=True) records each generated token's entropy
    as it samples (batched, left-padded, seeded), equal to one teacher-forced pass per completion."""
    from r1v3.generation import Sampling, TransformersBackend

    model, processor = sharpened(tiny_text_lm() if family == "text" else build_tiny(family))
    images = [] if family == "text" else [image()]
    questions = ["How many shapes? Wait, think.", "Which colour?", "Count the circles, then the squares."]
    requests = [Request(f"q{i}", [{"role": "user", "content": [{"type": "image"}] * len(images)
                                   + [{"type": "text", "text": q}]}], images) for i, q in enumerate(questions)]
    backend = TransformersBackend(model, processor, batch_size=4, progress=False, entropies=True)
    found = dict(backend.generate(requests, Sampling(max_new_tokens=10, temperature=1.0, n=2, seed=0)))
    plain = dict(TransformersBackend(model, processor, batch_size=4, progress=False).generate(
        requests, Sampling(max_new_tokens=10, temperature=1.0, n=2, seed=0)))
    for q in requests:
        assert [c.token_ids for c in found[q.id]] == [c.token_ids for c in plain[q.id]]  # recording changes nothing
        for c in found[q.id]:
            n_prompt, forced = E.teacher_forced_entropies(model, processor, E.prompt_text(processor, q), c.token_ids, images)
            assert len(c.entropies) == len(c.token_ids) == c.n_tokens and c.prompt_tokens == n_prompt
            assert max(abs(a - b) for a, b in zip(forced, c.entropies)) < 1e-4
