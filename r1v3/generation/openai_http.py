"""The OpenAI-compatible HTTP backend (text only): distill's endpoint teachers."""

from __future__ import annotations

import email.utils
import functools
import html
import json
import logging
import math
import os
import random
import threading
import time
import urllib.parse
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx2

from r1v3 import jsonio
from r1v3.errors import UserError
from r1v3.generation.base import Backend, Completion, OnResult, Progress, Request, Sampling, count_image_parts


def text_messages(request: Request) -> list[dict]:
    """Chat messages with string contents; UserError if the request holds an image."""
    if request.images or count_image_parts(request.messages):
        raise UserError(
            f"generation request {request.id!r} has images, but the OpenAI backend is text-only "
            "(give text-only teachers the image caption instead)"
        )
    out = []
    for m in request.messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        out.append({"role": m["role"], "content": content})
    return out


_RETRY_STATUS = (408, 409, 429)  # and every 5xx; 409 too because OpenAI answers lock timeouts with it
_MAX_ANSWER = 64 << 20  # a reasoning trace is well under 1 MB; anything near this is a broken or hostile server
_KEY_ENVS: set[str] = set()  # names of the env vars whose values are scrubbed from errors, logs and answers
_SCRUBBED = "***"
# How a key may come back transformed: a server echoing the header inside JSON (\" and \\, \/ or
# \uXXXX), Python's repr of the text or of its bytes (b'Bearer sk-...\r'), a URL (a Location
# naming it), HTML. Each is applied once and twice (a JSON string inside a JSON string).
_ESCAPES = (
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    lambda s: repr(s)[1:-1],
    lambda s: repr(s.encode("utf-8", "backslashreplace"))[2:-1],
    lambda s: s.encode("unicode_escape").decode("ascii"),
    lambda s: urllib.parse.quote(s, safe=""),
    lambda s: urllib.parse.quote_plus(s, safe=""),
    lambda s: html.escape(s, quote=True),
)


@functools.lru_cache(maxsize=16)
def _key_forms(value: str) -> tuple[str, ...]:
    """Every spelling of a key value to scrub, longest first (a longer form holds shorter ones)."""
    forms: set[str] = set()
    for key in {value, value.strip()}:
        if not key:
            continue
        spelled = {key}
        for _ in range(2):
            spelled |= {escape(k) for k in spelled for escape in _ESCAPES}
        forms |= {form.strip() for form in spelled}  # the text around a key keeps its own blanks
    return tuple(sorted(forms - {""}, key=len, reverse=True))


def scrub_secrets(text: str) -> str:
    """`text` without any form of the API keys the HTTP backend was given (see _ESCAPES)."""
    for name in tuple(_KEY_ENVS):  # a backend made in another thread may add one meanwhile
        value = os.environ.get(name)
        if value:
            for form in _key_forms(value):
                text = text.replace(form, _SCRUBBED)
    return text


def api_key(env: str) -> str | None:
    """The API key in $`env` as an Authorization header carries it, or None when `env` is empty or
    unset. Surrounding whitespace is dropped (a key read from a CRLF file ends in \\r\\n); a blank key,
    or one holding a character a header cannot carry (control characters, non-ASCII), is a
    UserError that names the variable and never the value."""
    if not env:
        return None
    _KEY_ENVS.add(env)  # scrubbed from here on, refused or not
    raw = os.environ.get(env)
    if raw is None:
        return None
    key = raw.strip()
    if not key:
        raise UserError(f"${env} is set but blank: export the endpoint's API key in it")
    bad = next((c for c in key if not " " <= c <= "~"), None)
    if bad is not None:
        what = "a non-ASCII character" if ord(bad) > 127 else f"a control character (code {ord(bad)})"
        raise UserError(f"${env} holds {what}, which an HTTP header cannot carry: set it to the key alone "
                        "(a stray line break, quote or pasted symbol?)")
    return key


class _ScrubLogs(logging.Filter):
    """httpcore logs response headers at DEBUG: a server echoing the key in one would put it in a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub_secrets(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


# a filter on a logger covers only records made by that very logger, not by its children
for _name in ("httpx2", "httpcore2.http11", "httpcore2.http2", "httpcore2.connection", "httpcore2.proxy"):
    logging.getLogger(_name).addFilter(_ScrubLogs())


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _NotStarted(Exception):
    pass


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible server (vLLM serve, llama.cpp, a hosted API).

    One HTTP call per completion (n calls for n samples, seeds seed..seed+n-1): not every server
    supports `n`, and per-call usage gives exact token counts. Up to `concurrency` calls are in
    flight at once on one pooled httpx2 client; a request's completions are yielded (and handed to
    `on_result`) as soon as all its calls are back, so a caller can save them before a later call
    fails. Connection errors, timeouts and HTTP 408/409/429/5xx are retried `max_retries` times
    after an exponential back-off with jitter, or after the server's Retry-After, both capped at
    `max_wait` seconds. `timeout` bounds each call: connecting, and the whole answer arriving.

    When a call fails for good, no new call starts, the calls in flight finish (their requests
    are still delivered), and a one-line UserError names the endpoint, the status and how many
    requests were done. The API key is read from the environment variable `api_key_env` (none is
    sent if unset), goes only to `base_url` (redirects are refused, not followed), and is replaced
    by *** in errors, logs and answers, including text a server echoes back.
    """

    BANS_WORDS = False  # the chat completions API has no field for it (logit_bias needs the server's token ids)

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 600.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 4,
        progress: bool = True,
        max_wait: float = 60.0,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UserError(f"OpenAI backend base_url must start with http:// or https://, got {base_url!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_wait", max_wait)):
            low = "> 0" if name == "timeout" else ">= 0"
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf
            if not ok or (name == "timeout" and value == 0):
                raise UserError(f"OpenAI backend {name} must be a finite number of seconds {low}, got {value!r}")
        for name, value, low in (("concurrency", concurrency, 1), ("max_retries", max_retries, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"OpenAI backend {name} must be an integer >= {low}, got {value!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self.concurrency = concurrency
        self.progress = progress
        self._key = api_key(api_key_env)  # checked before any request
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(self.timeout),
            limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,  # a redirect would carry the Authorization header to another address
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _scrub(self, text: str) -> str:
        return scrub_secrets(text)

    # -- one HTTP call

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        deadline = time.monotonic() + self.timeout
        try:
            with self._client.stream("POST", self.url, content=json.dumps(payload).encode(), headers=headers) as resp:
                raw = self._read(resp, deadline)
                status, resp_headers = resp.status_code, resp.headers
        except httpx2.TransportError as e:  # connection refused or reset, timeouts, broken HTTP
            raise _Retryable(f"{self.url}: {self._scrub(str(e) or type(e).__name__)}") from None
        return self._answer(status, resp_headers, raw)

    def _read(self, resp, deadline: float) -> bytes:
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > _MAX_ANSWER:
                raise UserError(f"{self.url} answered more than {_MAX_ANSWER >> 20} MiB; is base_url an OpenAI-compatible server?")
            if time.monotonic() > deadline:
                # read timeouts bound each wait; this bounds a server that trickles bytes
                raise _Retryable(f"{self.url}: no complete answer within {self.timeout:g} s (timeout)")
        return bytes(body)

    def _answer(self, status: int, headers, raw: bytes) -> dict:
        if 300 <= status < 400:
            where = self._scrub(headers.get("Location", "?"))
            raise UserError(f"{self.url} redirects (HTTP {status}) to {where}; set base_url to the final address")
        if status >= 400 or status < 200:
            # scrub before cutting: a key cut in half by the cut would no longer be recognised
            body = self._scrub(raw[: 1 << 16].decode(errors="replace"))[:300]
            message = f"{self.url} returned HTTP {status}: {body}".replace("\n", " ")
            if status in _RETRY_STATUS or status >= 500:
                raise _Retryable(message, retry_after_seconds(headers.get("Retry-After")))
            hint = f" (check ${self.api_key_env})" if status in (401, 403) else ""
            raise UserError(message + hint)
        try:
            return jsonio.loads(raw, self.url)
        except UserError as e:  # a cut-off answer: worth another try
            raise _Retryable(self._scrub(str(e))) from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        # jitter, so that many calls refused together do not all come back at the same instant
        if retry_after is not None:
            return min(self.max_wait, retry_after + self.backoff * random.random())
        return min(self.max_wait, self.backoff * 2**attempt * (0.5 + random.random()))

    def _one(self, messages: list[dict], sampling: Sampling, seed: int, stop: threading.Event | None = None) -> Completion:
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": seed,
            "n": 1,
        }
        for attempt in range(self.max_retries + 1):
            try:
                return self._completion(self._post(payload))
            except _Retryable as e:
                if attempt == self.max_retries:
                    raise UserError(f"OpenAI backend gave up after {attempt + 1} attempts: {e}".replace("\n", " ")) from None
                delay = self._delay(attempt, e.retry_after)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise UserError("OpenAI backend call cancelled")

    def _completion(self, data) -> Completion:
        try:
            choice = data["choices"][0]
            message = choice["message"]
            if not isinstance(message, dict) or not isinstance(choice, dict):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.url} answered without choices[0].message: {self._scrub(str(data))[:200]}") from None
        # a server's answer is data: anything but a string where text belongs counts as none
        text = message.get("content")
        text = text if isinstance(text, str) else ""
        # reasoning servers (vLLM --reasoning-parser, DeepSeek) return the trace apart from the answer;
        # distillation needs it, in the think template
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning and "<think>" not in text:
            text = f"<think>\n{reasoning.strip()}\n</think>\n\n{text.lstrip()}"
        usage = data.get("usage") if isinstance(data, dict) else None
        used = usage.get("completion_tokens") if isinstance(usage, dict) else None
        ok = isinstance(used, (int, float)) and not isinstance(used, bool) and 0 <= used < 1e12
        n_tokens = int(used) if ok else len(text.split())
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        # a key echoed into the text would otherwise be written into a dataset
        return Completion(text=self._scrub(text), n_tokens=n_tokens, finish_reason=reason)

    # -- many requests

    def _call(self, messages, sampling, seed, stop: threading.Event, halt: threading.Event) -> Completion:
        """`_one`, unless a call has already failed for good: then no new call starts (calls in flight
        finish). The failing worker sets `halt` itself, before it can pick up the next queued call."""
        if halt.is_set():
            raise _NotStarted
        try:
            return self._one(messages, sampling, seed, stop)
        except UserError:
            halt.set()
            raise

    def generate(self, requests, sampling: Sampling, on_result: OnResult | None = None):
        requests = self._checked(requests, sampling)
        prompts = {r.id: text_messages(r) for r in requests}  # fail on an image request before any HTTP call
        n = self.rows_per_request(sampling)
        calls = iter([(r.id, j) for r in requests for j in range(n)])
        rows: dict[str, list] = {}
        pending: dict = {}
        failure, done = None, 0
        bar = Progress(len(requests), self.progress)
        stop, halt = threading.Event(), threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="r1v3-http")
        try:
            while True:
                # a short queue, not every call at once: a failure leaves little to cancel
                while failure is None and len(pending) < 2 * self.concurrency and (call := next(calls, None)):
                    args = (prompts[call[0]], sampling, sampling.seed + sampling.first + call[1], stop, halt)
                    pending[pool.submit(self._call, *args)] = call
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    rid, j = pending.pop(fut)
                    try:
                        row = fut.result()
                    except _NotStarted:
                        continue
                    except UserError as e:
                        failure = failure or (rid, e)
                        continue
                    got = rows.setdefault(rid, [None] * n)
                    got[j] = row
                    if all(c is not None for c in got):
                        got = rows.pop(rid)
                        done += 1
                        completions = self._deliver(rid, got, sampling, on_result)
                        bar.advance(1, sum(c.n_tokens for c in completions))
                        yield rid, completions
            if failure is not None:
                rid, e = failure
                raise UserError(f"{e} [request {rid!r}; {done} of {len(requests)} requests completed, results delivered]")
        finally:
            stop.set()  # calls waiting to retry give up at once
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
