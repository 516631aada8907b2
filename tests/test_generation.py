import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image, ImageDraw

from r1v3.errors import UserError
from r1v3.generation import (
    Completion,
    OpenAIBackend,
    Request,
    Sampling,
    SeededSampler,
    TransformersBackend,
    VLLMBackend,
    bad_words_ids,
    ban_spellings,
    make_backend,
    special_ids_to_drop,
    think_tags_are_special,
    vllm_available,
    vllm_prompt,
    vllm_sampling_kwargs,
)
from r1v3.models import build_tiny, save_model

WORDS = "the quick brown fox how many shapes are in the image what colour is the triangle wait hmm so".split()


def image(i: int) -> Image.Image:
    im = Image.new("RGB", (40 + 7 * i % 50, 30 + 11 * i % 60), (i * 37 % 255, i * 91 % 255, i * 53 % 255))
    ImageDraw.Draw(im).rectangle([2, 2, 10 + i, 12], fill=(255, 255 - i * 9 % 255, 0))
    return im


def make_requests(n: int = 12, with_images: bool = True) -> list[Request]:
    """Prompts of growing length with 0, 1 or 2 images, so sorting by length reorders them."""
    out = []
    for i in range(n):
        k = i % 3 if with_images else 0
        text = " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(2 + 3 * i))
        content = [{"type": "image"}] * k + [{"type": "text", "text": text}]
        out.append(Request(f"q{i}", [{"role": "user", "content": content}], [image(3 * i + j) for j in range(k)]))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the tiny models' matmuls are too small to split; two OpenMP threads spinning against other
    # processes on a shared 2-core machine make generate() up to 40x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def internvl():
    return build_tiny("internvl")


def backend(model_processor, batch_size=4, **kw):
    model, processor = model_processor
    return TransformersBackend(model, processor, batch_size=batch_size, progress=False, **kw)


# --- transformers: the key property -----------------------------------------------------------


@pytest.mark.parametrize("family", ["internvl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3"])
def test_batched_equals_one_at_a_time_greedy(family):
    mp = build_tiny(family)
    mp[1].tokenizer.padding_side = "right"  # what training collators leave behind: the backend must not care
    requests = make_requests(12)
    sampling = Sampling(max_new_tokens=16)
    looped = backend(mp, batch_size=1).generate_all(requests, sampling)
    batched = backend(mp, batch_size=5).generate_all(requests, sampling)
    assert list(batched) == [r.id for r in requests]
    for r in requests:
        assert batched[r.id] == looped[r.id], r.id
    # distinct outputs, so a request mapped to another request's result could not go unnoticed
    assert len({c[0].text for c in batched.values()}) > 6
    assert mp[1].tokenizer.padding_side == "right"
    # sampling, n rows per request (generate expands pixel values per family): batching changes nothing either
    sampled = Sampling(max_new_tokens=8, temperature=1.0, n=2, seed=7)
    assert backend(mp, batch_size=2).generate_all(requests, sampled) == backend(mp, batch_size=10).generate_all(requests, sampled)


def test_ids_map_back_after_length_sorting(internvl):
    requests = make_requests(9)
    b = backend(internvl, batch_size=3)
    streamed = []
    got = list(b.generate(requests, Sampling(max_new_tokens=4), on_result=lambda rid, cs: streamed.append(rid)))
    seen = [rid for rid, _ in got]
    assert sorted(seen) == sorted(r.id for r in requests) and streamed == seen
    assert seen != [r.id for r in requests]  # really reordered: longest prompts first
    # each result is the one that request gets on its own
    alone = {r.id: b.generate_all([r], Sampling(max_new_tokens=4))[r.id] for r in requests}
    assert dict(got) == alone


def test_sampling_deterministic_for_seed_and_differs_across_seeds(internvl):
    requests = make_requests(6)
    s = dict(max_new_tokens=12, temperature=1.0, top_p=0.95)
    a1 = backend(internvl, batch_size=4).generate_all(requests, Sampling(seed=1, **s))
    a2 = backend(internvl, batch_size=4).generate_all(requests, Sampling(seed=1, **s))
    a3 = backend(internvl, batch_size=4).generate_all(requests, Sampling(seed=2, **s))
    assert a1 == a2
    assert all(a1[r.id] != a3[r.id] for r in requests)
    # per-request seeding: batch size, batch mates and resuming a subset change nothing
    assert backend(internvl, batch_size=1).generate_all(requests, Sampling(seed=1, **s)) == a1
    assert backend(internvl, batch_size=6).generate_all(requests[3:], Sampling(seed=1, **s)) == {r.id: a1[r.id] for r in requests[3:]}


def test_seeded_sampler_follows_temperature_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    picks = lambda t, p: SeededSampler(list(range(4000)), t, p)(None, logits).argmax(-1)  # noqa: E731
    freq = torch.bincount(picks(1.0, 1.0), minlength=4) / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    assert set(picks(1.0, 0.7).tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8: the two most likely tokens
    assert set(picks(1e-4, 1.0).tolist()) == {0}  # near-zero temperature is argmax
    out = SeededSampler([0, 1], 1.0, 1.0)(None, logits[:2])
    assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum() == 6


def test_n_completions(internvl):
    requests = make_requests(4)
    b = backend(internvl, batch_size=8)
    sampled = b.generate_all(requests, Sampling(max_new_tokens=8, temperature=1.0, n=3))
    for cs in sampled.values():
        assert len(cs) == 3 and all(isinstance(c, Completion) for c in cs)
        assert len({c.text for c in cs}) > 1
    greedy = b.generate_all(requests, Sampling(max_new_tokens=8, n=2))
    for cs in greedy.values():
        assert len(cs) == 2 and cs[0] == cs[1]



def test_later_samples_alone_equal_the_tail_of_a_longer_run(internvl):
    # what a resumed or extended distillation relies on: asking for samples 2..4 alone gives the
    # samples 2..4 of a run that asked for 0..4
    requests = make_requests(3)
    b = backend(internvl, batch_size=8)
    s = dict(max_new_tokens=8, temperature=1.0, seed=5)
    whole = b.generate_all(requests, Sampling(n=5, **s))
    tail = b.generate_all(requests, Sampling(n=3, first=2, **s))
    assert all(tail[r.id] == whole[r.id][2:] for r in requests)
    assert any(whole[r.id][0] != tail[r.id][0] for r in requests)


def test_completions_carry_their_token_ids(internvl):
    b = backend(internvl, batch_size=4)
    tokenizer = internvl[1].tokenizer
    for cs in b.generate_all(make_requests(4), Sampling(max_new_tokens=6, temperature=1.0, n=2)).values():
        for c in cs:
            assert len(c.token_ids) == c.n_tokens
            kept = [t for t in c.token_ids if t not in b.eos_ids and t not in b.drop_ids]
            assert tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False) == c.text

def test_finish_reason_length_and_stop():
    model, processor = build_tiny("internvl", seed=3)
    request = make_requests(2)[1]
    capped = backend((model, processor)).generate_all([request], Sampling(max_new_tokens=5))[request.id][0]
    assert capped.finish_reason == "length" and capped.n_tokens == 5

    # make the 4th greedy token (the first one not seen before it) the end-of-sequence token
    b = backend((model, processor))
    inputs = b.encode([b.prompt_text(request)], [request.images])
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
    k = next(k for k in range(3, 8) if ids[k] not in ids[:k])
    model.generation_config.eos_token_id = [ids[k]]
    stopped = backend((model, processor)).generate_all([request], Sampling(max_new_tokens=8))[request.id][0]
    assert stopped.finish_reason == "stop"
    assert stopped.n_tokens == k + 1  # the stop token counts
    assert stopped.text == processor.tokenizer.decode(ids[:k], skip_special_tokens=True)


def test_think_tags_survive_decoding_even_when_special(internvl):
    from tokenizers import AddedToken

    _, processor = build_tiny("internvl")
    tok = processor.tokenizer
    b = TransformersBackend(internvl[0], processor, progress=False)
    ids = tok("<think> Wait </think> ok", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<img>")]
    ids += [tok.eos_token_id, tok.pad_token_id]
    assert not think_tags_are_special(tok)
    assert b._completion(torch.tensor(ids)) == Completion("<think> Wait </think> ok", len(ids) - 1, "stop", tuple(ids[:-1]))

    # a reasoning tokenizer that registers the think tags as special tokens
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<think>", "</think>")], special_tokens=True)
    assert think_tags_are_special(tok)
    assert tok.decode(ids, skip_special_tokens=True) == " Wait  ok"  # what plain decoding would do
    b = TransformersBackend(internvl[0], processor, progress=False)
    assert tok.convert_tokens_to_ids("<think>") not in special_ids_to_drop(tok)
    assert b._completion(torch.tensor(ids)).text == "<think> Wait </think> ok"


def test_text_only_requests_and_progress_bar(internvl, capsys, monkeypatch):
    requests = make_requests(3, with_images=False)
    b = TransformersBackend(*internvl, batch_size=2, progress=True)
    got = b.generate_all(requests, Sampling(max_new_tokens=3))
    assert all(len(cs) == 1 and cs[0].n_tokens <= 3 for cs in got.values())
    assert capsys.readouterr() == ("", "")  # no terminal: no bar (an error stays one line on stderr)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # what rich takes for a terminal
    b.generate_all(requests, Sampling(max_new_tokens=3))
    out, err = capsys.readouterr()
    assert out == "" and "items/s" in err  # on stderr: stdout holds a command's --json alone


def _holds(ids: tuple, seq: list) -> bool:
    return any(list(ids[i : i + len(seq)]) == seq for i in range(len(ids) - len(seq) + 1))


def test_banned_words_are_never_generated(internvl):
    model, processor = internvl
    tok = processor.tokenizer
    requests = make_requests(6)
    b = backend(internvl, batch_size=3)
    free = b.generate_all(requests, Sampling(max_new_tokens=12))
    # a word the greedy model writes, spelled by the tokenizer as one token
    emitted = [t for cs in free.values() for t in cs[0].token_ids]
    word = next(w for t in emitted if (w := tok.decode([t]).strip()).isalpha() and len(w) > 1
                and [t] in bad_words_ids(tok, [w]))
    banned = bad_words_ids(tok, [word])
    assert sum(_holds(cs[0].token_ids, seq) for cs in free.values() for seq in banned) > 0
    for sampling in (Sampling(max_new_tokens=12, ban_words=(word,)),
                     Sampling(max_new_tokens=12, temperature=1.0, n=2, seed=3, ban_words=(word,))):
        got = b.generate_all(requests, sampling)
        assert list(got) == [r.id for r in requests]
        for cs in got.values():
            assert len(cs) == sampling.n and all(c.n_tokens > 0 for c in cs)
            assert not any(_holds(c.token_ids, seq) for c in cs for seq in banned), word
        if sampling.greedy:
            assert got != free
    # each spelling is banned alone and after a space, in both cases of its first letter
    assert ban_spellings(["Wait", "hmm"]) == ["Wait", "wait", "hmm", "Hmm"]
    assert tok(" Wait", add_special_tokens=False)["input_ids"] in bad_words_ids(tok, ["wait"])
    with pytest.raises(UserError, match="banned word"):
        b.generate_all(requests[:1], Sampling(ban_words=(" Wait",)))


def test_banned_words_reach_vllm_and_are_refused_over_http():
    kwargs = vllm_sampling_kwargs(Sampling(ban_words=("Wait", "Hmm")), "q1")
    assert kwargs["bad_words"] == ["Wait", "wait", "Hmm", "hmm"]
    assert "bad_words" not in vllm_sampling_kwargs(Sampling(), "q1")
    http = OpenAIBackend("http://127.0.0.1:9/v1", "m", progress=False)  # nothing listens: no call is made
    with pytest.raises(UserError, match="OpenAIBackend cannot ban words while decoding"):
        http.generate_all([text_request("a", "hi")], Sampling(ban_words=("Wait",)))


def test_bad_requests_are_user_errors(internvl):
    b = backend(internvl)
    r = make_requests(3)
    with pytest.raises(UserError, match="q1.*1 image parts in messages but 0 images"):
        b.generate_all([Request("q1", r[1].messages, [])], Sampling())
    with pytest.raises(UserError, match="duplicate request id"):
        b.generate_all([r[0], r[0]], Sampling())
    with pytest.raises(UserError, match="temperature"):
        b.generate_all(r, Sampling(temperature=-1))
    with pytest.raises(UserError, match="max_new_tokens"):
        b.generate_all(r, Sampling(max_new_tokens=0))


# --- vLLM (not installable here): the error path and the pure input construction -------------


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed")
def test_missing_vllm_says_how_to_install(tmp_path):
    with pytest.raises(UserError, match=r"pip install 'r1v3\[vllm\]'"):
        VLLMBackend(tmp_path)
    with pytest.raises(UserError, match=r"pip install 'r1v3\[vllm\]'"):
        make_backend("vllm", tmp_path)


def test_vllm_prompt_and_sampling_construction(internvl):
    _, processor = internvl
    r0, r1, r2 = make_requests(3)
    assert vllm_prompt(processor, r0) == {"prompt": processor.apply_chat_template(r0.messages, add_generation_prompt=True, tokenize=False)}
    p = vllm_prompt(processor, r2)
    assert p["prompt"].count("<IMG_CONTEXT>") == 2 and p["prompt"].endswith("<|im_start|>assistant\n")
    assert p["multi_modal_data"]["image"] == r2.images
    greedy = vllm_sampling_kwargs(Sampling(max_new_tokens=7, n=4), "q1")
    assert greedy["n"] == 1 and greedy["temperature"] == 0.0 and greedy["max_tokens"] == 7
    sampled = vllm_sampling_kwargs(Sampling(temperature=1.0, top_p=0.9, n=4, seed=5), "q1")
    assert (sampled["n"], sampled["temperature"], sampled["top_p"]) == (4, 1.0, 0.9)
    assert sampled["seed"] == vllm_sampling_kwargs(Sampling(temperature=1.0, seed=5), "q1")["seed"]
    assert sampled["seed"] != vllm_sampling_kwargs(Sampling(temperature=1.0, seed=5), "q2")["seed"]


def test_vllm_prompt_drops_a_bos_vllm_would_add_again():
    class Tok:
        bos_token, bos_token_id = "<s>", 1

        def __call__(self, text):
            return {"input_ids": [1, 9]}  # this tokenizer prepends BOS itself

    class Proc:
        tokenizer = Tok()

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            return "<s>[INST] hi [/INST]"

    assert vllm_prompt(Proc(), text_request("a", "hi")) == {"prompt": "[INST] hi [/INST]"}


def test_make_backend(tmp_path):
    save_model(*build_tiny("llava"), tmp_path / "m")
    b = make_backend("auto", tmp_path / "m", batch_size=3, progress=False)
    assert isinstance(b, TransformersBackend) and b.batch_size == 3
    with pytest.raises(UserError, match="unknown generation backend"):
        make_backend("tgi", tmp_path / "m")


# --- OpenAI-compatible HTTP endpoint -------------------------------------------------------------


class FakeServer:
    """A tiny OpenAI-compatible chat completions server on 127.0.0.1; `fail_first` 503s to retry through."""

    def __init__(self, key="sk-test-SECRET", fail_first=0):
        self.calls, self.key, self.fail_first = [], key, fail_first
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.calls.append((self.path, self.headers.get("Authorization"), body))
                if self.headers.get("Authorization") != f"Bearer {server.key}":
                    # a server that echoes the key it got: the client must not repeat it
                    return self.reply(401, {"error": f"bad key {self.headers.get('Authorization')}"})
                if len(server.calls) <= server.fail_first:
                    return self.reply(503, {"error": "overloaded"})
                prompt = body["messages"][-1]["content"]
                message = {"role": "assistant", "content": f"echo {prompt} seed={body['seed']}"}
                if "reason" in prompt:
                    message = {"role": "assistant", "content": "B", "reasoning_content": "Hmm, wait."}
                finish = "length" if "long" in prompt else "stop"
                self.reply(200, {"choices": [{"message": message, "finish_reason": finish}], "usage": {"completion_tokens": 7}})

            def reply(self, code, data):
                raw = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def text_request(rid, text, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
    return Request(rid, messages, [])


@pytest.mark.integration
def test_openai_backend_against_local_server(server, monkeypatch):
    monkeypatch.setenv("TEST_KEY", server.key)
    b = OpenAIBackend(server.url, "teacher", api_key_env="TEST_KEY", timeout=5, progress=False)
    requests = [text_request("a", "2+2?", system="Think."), text_request("b", "go long"), text_request("c", "reason")]
    got = b.generate_all(requests, Sampling(max_new_tokens=9, temperature=0.7, n=2, seed=3))
    assert got["a"] == [Completion("echo 2+2? seed=3", 7, "stop"), Completion("echo 2+2? seed=4", 7, "stop")]
    assert got["b"][0].finish_reason == "length"
    assert got["c"][0].text == "<think>\nHmm, wait.\n</think>\n\nB"
    assert len(server.calls) == 6  # one call per completion
    path, auth, body = next(c for c in server.calls if c[2]["messages"][-1]["content"] == "2+2?")
    assert path == "/v1/chat/completions" and auth == f"Bearer {server.key}"
    assert body["model"] == "teacher" and body["max_tokens"] == 9 and body["n"] == 1 and body["temperature"] == 0.7
    assert body["messages"] == [{"role": "system", "content": "Think."}, {"role": "user", "content": "2+2?"}]


@pytest.mark.integration
def test_openai_backend_retries_then_gives_up_without_leaking_key(monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test-SECRET")
    flaky = FakeServer(fail_first=2)
    try:
        b = OpenAIBackend(flaky.url, "t", api_key_env="TEST_KEY", max_retries=2, backoff=0.01, progress=False)
        assert b.generate_all([text_request("a", "hi")], Sampling())["a"][0].text == "echo hi seed=0"
        assert len(flaky.calls) == 3
        dead = FakeServer(fail_first=100)
        try:
            b = OpenAIBackend(dead.url, "t", api_key_env="TEST_KEY", max_retries=1, backoff=0.01, progress=False)
            with pytest.raises(UserError, match="gave up after 2 attempts.*HTTP 503"):
                b.generate_all([text_request("a", "hi")], Sampling())
        finally:
            dead.close()
        monkeypatch.setenv("TEST_KEY", "sk-wrong-SECRET")
        with pytest.raises(UserError, match=r"HTTP 401.*check \$TEST_KEY") as err:
            b = OpenAIBackend(flaky.url, "t", api_key_env="TEST_KEY", backoff=0.01, progress=False)
            b.generate_all([text_request("a", "hi")], Sampling())
        assert "SECRET" not in str(err.value)
    finally:
        flaky.close()


@pytest.mark.integration
def test_openai_backend_is_text_only(server):
    b = OpenAIBackend(server.url, "t", progress=False)
    with pytest.raises(UserError, match="'q1' has images.*text-only"):
        b.generate_all(make_requests(2), Sampling())
    assert server.calls == []
    with pytest.raises(UserError, match="http"):
        OpenAIBackend("localhost:8000", "t")


class ScriptedServer:
    """An OpenAI-compatible server whose k-th call (0-based) is answered by `script(k)`:
    (status, extra headers, seconds to wait first); it counts how many calls were in flight at most."""

    def __init__(self, script):
        self.calls, self.in_flight, self.max_in_flight = [], 0, 0
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: the client's pool is exercised
            # headers and body go out in two writes: with Nagle on, each kept-alive answer waits 40 ms for an ACK
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    k = len(server.calls)
                    server.calls.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, headers, delay = script(k)
                    time.sleep(delay)
                finally:
                    with lock:
                        server.in_flight -= 1
                prompt = body["messages"][-1]["content"]
                data = {"choices": [{"message": {"content": f"{prompt} seed={body['seed']}"}}], "usage": {"completion_tokens": 3}}
                raw = json.dumps(data if status == 200 else {"error": "busy"}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # a client that timed out has hung up
                    self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.httpd.daemon_threads = True
        # socketserver's backlog of 5 would drop the SYNs of more clients connecting at once: 1 s stalls
        self.httpd.request_queue_size = 64
        self.httpd.server_bind()
        self.httpd.server_activate()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(script):
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def http_backend(url, **kw):
    return OpenAIBackend(url, "t", api_key_env="R1V3_NO_SUCH_KEY", progress=False, **{"backoff": 0.01, **kw})


@pytest.mark.parametrize("concurrency,n", [(1, 1), (4, 1), (6, 3)])
@pytest.mark.integration
def test_openai_backend_keeps_concurrency_calls_in_flight(scripted, concurrency, n):
    server = scripted(lambda k: (200, {}, 0.15))
    requests = [text_request(f"r{i}", f"p{i}") for i in range(12 // n + 2)]
    sampling = Sampling(temperature=1.0, n=n, seed=5)
    start = time.perf_counter()
    got = http_backend(server.url, concurrency=concurrency).generate_all(requests, sampling)
    elapsed = time.perf_counter() - start
    assert server.max_in_flight == concurrency  # reached, never exceeded
    calls = len(requests) * n
    assert len(server.calls) == calls
    assert elapsed < 0.15 * (calls / concurrency + 3)  # the calls really overlapped
    # samples of one request may run on different connections: each keeps its own seed and order
    assert got == {r.id: [Completion(f"p{r.id[1:]} seed={5 + j}", 3, "stop") for j in range(n)] for r in requests}


@pytest.mark.integration
def test_openai_backend_honours_retry_after_within_its_cap(scripted):
    server = scripted(lambda k: (429, {"Retry-After": "1"}, 0) if k == 0 else (200, {}, 0))
    start = time.perf_counter()
    assert http_backend(server.url).generate_all([text_request("a", "x")], Sampling())["a"][0].text == "x seed=0"
    assert time.perf_counter() - start >= 0.95 and len(server.calls) == 2  # waited what the server asked, not 10 ms
    slow = scripted(lambda k: (503, {"Retry-After": "3600"}, 0) if k < 2 else (200, {}, 0))
    start = time.perf_counter()
    assert http_backend(slow.url, max_wait=0.05).generate_all([text_request("a", "x")], Sampling())["a"][0].text == "x seed=0"
    assert time.perf_counter() - start < 5 and len(slow.calls) == 3


def test_retry_after_values():
    from r1v3.generation import retry_after_seconds

    assert retry_after_seconds("7") == 7.0 and retry_after_seconds("0.5") == 0.5 and retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    for bad in (None, "", "soon", "nan", "inf", "Wed, 99 Foo"):
        assert retry_after_seconds(bad) is None, bad


@pytest.mark.integration
def test_openai_backend_retries_500_three_times_then_succeeds(scripted):
    server = scripted(lambda k: (500, {}, 0) if k < 3 else (200, {}, 0))
    got = http_backend(server.url, max_retries=3).generate_all([text_request("a", "x")], Sampling())
    assert got["a"][0].text == "x seed=0" and len(server.calls) == 4
    # and one retry fewer is one too few
    server = scripted(lambda k: (500, {}, 0) if k < 3 else (200, {}, 0))
    with pytest.raises(UserError, match="gave up after 3 attempts"):
        http_backend(server.url, max_retries=2).generate_all([text_request("a", "x")], Sampling())


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.integration
def test_openai_backend_failing_for_good_delivers_what_was_done_first(scripted, concurrency):
    # calls 0-4 answer (the later ones slowly, so they are in flight when the endpoint breaks), then only 500s
    server = scripted(lambda k: (200, {}, 0.02 * k) if k < 5 else (500, {}, 0))
    requests = [text_request(f"r{i}", f"p{i}") for i in range(9)]
    delivered, yielded = [], []
    b = http_backend(server.url, concurrency=concurrency, max_retries=2)
    with pytest.raises(UserError) as e:
        for rid, cs in b.generate(requests, Sampling(), on_result=lambda rid, cs: delivered.append((rid, cs))):
            yielded.append(rid)
    assert sorted(yielded) == sorted(rid for rid, _ in delivered) == [f"r{i}" for i in range(5)]
    assert all(cs == [Completion(f"p{rid[1:]} seed=0", 3, "stop")] for rid, cs in delivered)
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert f"{server.url}/chat/completions returned HTTP 500" in message and "gave up after 3 attempts" in message
    assert "5 of 9 requests completed" in message
    assert len(server.calls) <= 5 + 3 * concurrency  # no new call started after the failure


@pytest.mark.integration
def test_openai_backend_unreachable_endpoint_is_one_clear_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError) as e:
        http_backend(f"http://127.0.0.1:{port}/v1", max_retries=2).generate_all([text_request("a", "x")], Sampling())
    message = str(e.value)
    assert len(message.splitlines()) == 1 and f"http://127.0.0.1:{port}/v1/chat/completions" in message
    assert "gave up after 3 attempts" in message and "Connection refused" in message and "0 of 1 requests completed" in message


@pytest.mark.integration
def test_openai_backend_timeout_covers_the_whole_answer(scripted):
    server = scripted(lambda k: (200, {}, 2.0))
    start = time.perf_counter()
    with pytest.raises(UserError, match="gave up after 2 attempts.*timed out"):
        http_backend(server.url, timeout=0.3, max_retries=1).generate_all([text_request("a", "x")], Sampling())
    assert time.perf_counter() - start < 1.5


@pytest.mark.integration
def test_openai_backend_timeout_stops_a_trickling_answer():
    class Trickle(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # every byte comes well within the read timeout, the whole answer never does
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            with contextlib.suppress(ConnectionError):
                for _ in range(40):
                    self.wfile.write(b" ")
                    time.sleep(0.05)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        start = time.perf_counter()
        with pytest.raises(UserError, match=r"gave up after 1 attempts.*no complete answer within 0.3 s"):
            http_backend(f"http://127.0.0.1:{httpd.server_port}/v1", timeout=0.3, max_retries=0).generate_all(
                [text_request("a", "x")], Sampling())
        assert time.perf_counter() - start < 1.0
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.integration
def test_openai_backend_settings_are_checked():
    for kw, flag in [({"concurrency": 0}, "concurrency"), ({"timeout": 0}, "timeout"), ({"max_retries": -1}, "max_retries"),
                     ({"max_wait": float("inf")}, "max_wait"), ({"backoff": "1"}, "backoff"), ({"concurrency": 2.5}, "concurrency")]:
        with pytest.raises(UserError, match=flag):
            OpenAIBackend("http://127.0.0.1:9/v1", "t", **kw)
