"""Throughput of the HTTP teacher client (OpenAIBackend) against its concurrency.

    python benchmarks/bench_http_teacher.py [--service-ms 50] [--limit 8] [--requests 80]
                                            [--concurrency 1,2,4,8,16]

Starts an OpenAI-compatible chat completions server on 127.0.0.1 in this process (a thread per
connection, keep-alive) that takes `--service-ms` to answer each call and serves at most
`--limit` calls at once (a semaphore: further calls queue, as on a vLLM server whose batch is
full). For each client concurrency c it sends the same fixed number of requests through
r1v3.generation.OpenAIBackend and prints requests/s, the ratio to c=1, and the most calls the
server saw in flight. The bar: for every c <= limit, throughput at c is at least 0.7*c times the
c=1 rate; above the limit the server caps it, and it must stay at 0.7*limit or more (more calls
than the server takes must not cost throughput). Exits 1 if the bar is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from r1v3.generation import OpenAIBackend, Request, Sampling  # noqa: E402

BAR = 0.7
DEADLINE_S = 60.0


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: 16 clients connecting at once would lose SYNs and
    # wait a second for the retransmit, which real servers (backlog 128 and up) never show
    request_queue_size = 128


class Teacher:
    """A loopback server with a fixed service time and at most `limit` calls served at once."""

    def __init__(self, service_s: float, limit: int):
        self.in_flight = self.max_in_flight = self.calls = 0
        lock, slots, teacher = threading.Lock(), threading.Semaphore(limit), self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are two writes: with Nagle on, each kept-alive answer would wait 40 ms for an ACK
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    teacher.calls += 1
                    teacher.in_flight += 1
                    teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
                with slots:
                    time.sleep(service_s)
                with lock:
                    teacher.in_flight -= 1
                text = f"<think>\nthe answer to {body['messages'][-1]['content']}\n</think>\n\nB"
                raw = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                                  "usage": {"completion_tokens": 12}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def reset(self) -> None:
        self.max_in_flight = self.calls = 0

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def measure(teacher: Teacher, concurrency: int, n_requests: int) -> dict:
    requests = [Request(f"q{i}", [{"role": "user", "content": f"problem {i}"}]) for i in range(n_requests)]
    with OpenAIBackend(teacher.url, "teacher", api_key_env="R1V3_BENCH_KEY", timeout=30, max_retries=0,
                       concurrency=concurrency, progress=False) as backend:
        backend.generate_all(requests[:1], Sampling())  # warm-up: imports, first connection
        teacher.reset()
        start = time.perf_counter()
        got = backend.generate_all(requests, Sampling())
        seconds = time.perf_counter() - start
    wrong = [r.id for r in requests if got[r.id][0].text != f"<think>\nthe answer to {r.messages[-1]['content']}\n</think>\n\nB"]
    if wrong or teacher.calls != n_requests:
        raise SystemExit(f"c={concurrency}: {len(wrong)} wrong answers, {teacher.calls} calls for {n_requests} requests")
    return {"c": concurrency, "seconds": seconds, "rps": n_requests / seconds, "max_in_flight": teacher.max_in_flight}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--service-ms", type=float, default=50.0, help="server time per call")
    ap.add_argument("--limit", type=int, default=8, help="calls the server serves at once")
    ap.add_argument("--requests", type=int, default=80, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,2,4,8,16", help="comma list; must start with 1")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if levels[0] != 1 or any(c < 1 for c in levels):
        ap.error("--concurrency must start with 1 (the baseline) and hold positive integers")
    worst_case = args.requests * args.service_ms / 1000 * len(levels)
    if worst_case > DEADLINE_S:
        ap.error(f"{args.requests} requests x {args.service_ms:g} ms x {len(levels)} levels could take {worst_case:.0f} s; "
                 f"keep it under {DEADLINE_S:.0f} s")

    print(f"command: python benchmarks/bench_http_teacher.py --service-ms {args.service_ms:g} --limit {args.limit} "
          f"--requests {args.requests} --concurrency {args.concurrency}")
    teacher = Teacher(args.service_ms / 1000, args.limit)
    try:
        rows = [measure(teacher, c, args.requests) for c in levels]
    finally:
        teacher.close()

    base = rows[0]["rps"]
    ideal = 1000 / args.service_ms
    print(f"\nloopback teacher: {args.service_ms:g} ms per call, {args.limit} calls at once; "
          f"{args.requests} requests per level (ideal c=1 rate {ideal:.1f} req/s)\n")
    print("| concurrency | seconds | requests/s | vs c=1 | bar (0.7*min(c, limit)) | max calls in flight | |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    missed = []
    for row in rows:
        c, ratio = row["c"], row["rps"] / base
        bar = BAR * min(c, args.limit)
        verdict = "ok" if ratio >= bar else "MISSED"
        if verdict == "MISSED":
            missed.append(c)
        print(f"| {c} | {row['seconds']:.2f} | {row['rps']:.1f} | {ratio:.2f}x | {bar:.1f}x | {row['max_in_flight']} | {verdict} |")
    print(f"\nbar {'MISSED at c=' + ','.join(map(str, missed)) if missed else 'met'} "
          f"(total {sum(r['seconds'] for r in rows):.1f} s of requests)")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
