"""A scripted OpenAI-compatible teacher on loopback and the problem rows it answers, for distill's tests."""

import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from r1v3 import data

WORDS = "red blue green circle square left right above below count shape one two three four five".split()


def prose(n_chars, seed=0):
    rng = random.Random(seed)
    words = []
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append(rng.choice(WORDS) + str(rng.randrange(1000)))
    return " ".join(words)


R = "<think>There are three red circles in the image, so the count is 3.</think>\n\\boxed{%s}"
# question number -> (question_type, answer, [response of sample 0, response of sample 1, ...])
SCRIPT = {
    1: ("multiple-choice", "B", [R % "B", R % "B"]),  # right twice: kept + duplicate
    2: ("open", "4", ["I count the squares: there are 4 squares in the image.\nSo the answer is \\boxed{4}."] * 2),
    3: ("open", "5", [R % "7"] * 2),  # wrong
    4: ("multiple-choice", "A", ["I think it is five, maybe."] * 2),  # unparseable
    5: ("open", "3", ["<think>Let me think about the shapes and their colours for a while"] * 2),  # unclosed
    6: ("open", "2", ["<think>The caption says there are 2 blue squares, so 2.</think>\\boxed{2}"] * 2),  # rewritten
    7: ("multiple-choice", "C", ["<think>Per caption, the shape on the left is a triangle.</think>\\boxed{C}"] * 2),
    8: ("open", "3", ["<think>" + "I count the circles again. " * 60 + "</think>\\boxed{3}"] * 2),  # runaway
    9: ("open", "3", ["<think>" + prose(3000) + "</think>\\boxed{3}"] * 2),  # too long (max 2000)
    10: ("open", "3", ["<think>Counting all the circles gives the answer.</think>\\boxed{9^9^9^9^9^9^9^9^9}"] * 2),
    11: ("multiple-choice", "D", ["<think>The blue shape is a square at the top, so option D.</think>\\boxed{D}",
                                  "<think>The square is blue: D.</think>\n\n\\boxed{D}"]),
}


def row(q, qtype, answer, caption=True):
    return {"id": f"p{q}", "images": [Image.new("RGB", (16 + q, 12), "white")], "question": f"Q{q}: what is shown?",
            "options": ["circle", "square", "triangle", "cross"] if qtype == "multiple-choice" else [],
            "answer": answer, "question_type": qtype, "subject": "counting" if q % 2 else "color",
            "difficulty": "hard" if q > 6 else "normal", "caption": f"shapes of problem {q}" if caption else ""}


def put_dataset(store, name, rows, split="train"):
    with store.publish(name, "dataset", stage="test") as draft:
        data.write_splits(draft.path, {split: rows})
    return draft.artifact


class Teacher:
    """An OpenAI-compatible chat endpoint answering from SCRIPT by the question number in the prompt
    and the sample (seed); counts calls per (question, sample), may 500 after `fail_after` answers
    or stall after `stall_after`."""

    def __init__(self, script=SCRIPT, fail_after=None):
        self.script, self.fail_after, self.stall_after, self.released = script, fail_after, None, threading.Event()
        self.calls, self.answered, self.lock = [], 0, threading.Lock()
        self.keys = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                q = int(re.search(r"Q(\d+):", prompt).group(1))
                with server.lock:
                    server.calls.append((q, body["seed"]))
                    server.keys.append(self.headers.get("Authorization"))
                    failing = server.fail_after is not None and server.answered >= server.fail_after
                    stalling = server.stall_after is not None and server.answered >= server.stall_after
                    server.answered += not (failing or stalling)
                if stalling:  # hangs until the client is killed or the server closes
                    server.released.wait(60)
                if failing or stalling:
                    return self.reply(500, {"error": "teacher down"})
                responses = server.script[q][2]
                text = responses[body["seed"] % len(responses)]
                self.reply(200, {"choices": [{"message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}], "usage": {"completion_tokens": len(text) // 4}})

            def reply(self, code, payload):
                raw = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except BrokenPipeError:  # a client killed mid-call
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
