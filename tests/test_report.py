"""`r1v3 report`: the page's lineage graph, embedded plots, eval tables, escaping, missing inputs,
and (slow) a real pipeline's page loaded by headless Chromium with the network off."""

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = Path("/usr/bin/chromium")


def png(colour, size=(48, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def publish(store, name, kind, stage, inputs=(), files=None, config=None, metrics=None):
    with store.publish(name, kind, stage=stage, config=config or {"seed": 0}, inputs=list(inputs)) as draft:
        if kind == "model":
            (draft.path / "config.json").write_text("{}")
            (draft.path / "model.safetensors").write_bytes(b"\0" * 16)
        if kind == "dataset":
            (draft.path / "train.parquet").write_bytes(b"PAR1")
        for rel, data in (files or {}).items():
            (draft.path / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
        draft.metrics.update(metrics or {})
    return draft.artifact


def scores(acc, n, failures):
    return json.dumps({"overall": {"acc": acc, "n": n}, "disciplines": {},
                       "subjects": {"counting": {"acc": acc, "n": n}}, "parse_failures": {"n": failures,
                                                                                          "rate": failures / n},
                       "samples": 1, "mean@1": acc, "pass@1": acc, "style": "reasoning"})


@pytest.fixture
def pipeline(cli):
    """base + shapes -> cold (sft) -> grpo (rl) -> pick (select-ckpt) -> final; evals of cold, final and an outsider."""
    s = cli.store
    base = publish(s, "base", "model", "init")
    shapes = publish(s, "shapes", "dataset", "synth")
    cold = publish(s, "cold", "model", "sft", [base, shapes], {"loss.png": png("red")},
                   config={"learning_rate": 2e-5, "note": HOSTILE}, metrics={"final_loss": 1.25, "steps": 3})
    grpo = publish(s, "grpo", "run", "rl", [cold, shapes], {"curves.png": png("green")},
                   metrics={"checkpoints": [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.75}]})
    pick = publish(s, "pick", "selection", "select-ckpt", [grpo], {"entropy-vs-accuracy.png": png("blue")})
    final = publish(s, "final", "model", "select-ckpt", [grpo, pick], metrics={HOSTILE: "x"})
    publish(s, "final-ev", "eval", "eval-mmmu", [final, shapes], {"scores.json": scores(0.625, 8, 1),
                                                                  "chart.png": png("purple")})
    publish(s, "cold-ev", "eval", "eval-mmmu", [cold, shapes], {"scores.json": scores(0.25, 8, 3)})
    outsider = publish(s, "outsider", "model", "init")
    publish(s, "outsider-ev", "eval", "eval-mmmu", [outsider, shapes], {"scores.json": scores(0.0, 8, 8)})
    return cli


def write_report(cli, tmp_path, ref="final", name="page.html"):
    out = tmp_path / name
    code, stdout, err = cli("report", ref, "--out", out)
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}"
    return out.read_text()


def lineage_refs(store, ref):
    """Every artifact of the lineage and every input entry of their manifests."""
    refs, edges, todo = [], [], [ref]
    while todo:
        r = todo.pop(0)
        if r in refs:
            continue
        refs.append(r)
        for inp in store.resolve(r).manifest.get("inputs", []):
            edges.append((inp["ref"], r))
            todo.append(inp["ref"])
    return refs, edges


def test_page_embeds_every_plot_and_the_evals_of_the_lineage(pipeline, tmp_path):
    page = write_report(pipeline, tmp_path)
    refs, _ = lineage_refs(pipeline.store, "final@v1")
    assert len(refs) == 6
    embedded = 0
    for ref in refs + ["final-ev@v1"]:
        art = pipeline.store.resolve(ref)
        for rel in art.manifest["files"]:
            if rel.endswith(".png"):
                assert base64.b64encode(art.file(rel).read_bytes()).decode() in page, (ref, rel)
                embedded += 1
    assert embedded == 4 and page.count("data:image/png;base64,") == 4
    evals = page[page.index('id="evals"'):page.index('id="artifacts"')]
    assert "final-ev@v1" in evals and "cold-ev@v1" in evals and "outsider" not in evals
    row = re.search(r"<tr><td><a href=\"#eval-\d\">final-ev@v1</a></td>(.*?)</tr>", evals).group(1)
    assert re.findall(r"<td>(.*?)</td>", row) == ["final@v1", "shapes@v1", "reasoning", "1", "8", "62.5%", "1 (12.5%)"]
    assert "<td>counting</td><td>8</td><td>25.0%</td>" in evals  # cold-ev's per-task table
    assert "<td>0.75</td>" in page  # grpo's checkpoints as a table of records


def test_no_external_reference_no_script(pipeline, tmp_path):
    page = write_report(pipeline, tmp_path)
    assert not re.search(r"https?://", page)
    targets = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.I)
    assert targets and all(t.startswith(("data:image/png;base64,", "#")) for t in targets)
    assert set(re.findall(r"url\(([^)]*)\)", page)) == {"#arrow"} and "@import" not in page
    assert "<script" not in page.lower()
    assert "default-src 'none'; img-src data:" in page  # a fetch the escaping missed would still be refused


def test_manifest_text_is_escaped(pipeline, tmp_path):
    page = write_report(pipeline, tmp_path)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the config value and the metric key
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2
    s = pipeline.store
    publish(s, "odd", "model", "<b>stage</b>", [s.resolve("final")], {'a"b<c>.png': png("black")},
            config={"k": "\u00e9\u2603 \"quoted\" 'single' & \x1b[31m"})
    page = write_report(pipeline, tmp_path, "odd", "odd.html")
    assert "<b>" not in page and "&lt;b&gt;stage&lt;/b&gt;" in page
    assert 'alt="a&quot;b&lt;c&gt;.png of odd@v1"' in page
    assert "&amp; ?[31m" in page and "\x1b" not in page and page.isascii()  # control characters shown as ?
    assert "&#233;&#9731;" in page  # written as ASCII whatever the locale


def test_lineage_graph_one_node_per_artifact_one_edge_per_input(pipeline, tmp_path):
    page = write_report(pipeline, tmp_path)
    refs, edges = lineage_refs(pipeline.store, "final@v1")
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert sorted(re.findall(r'<g class="node" data-ref="([^"]+)"', svg)) == sorted(refs)
    drawn = re.findall(r'<path class="edge" data-from="([^"]+)" data-to="([^"]+)"', svg)
    assert sorted(drawn) == sorted(edges) and len(drawn) == 7
    x = {ref: int(v) for ref, v in re.findall(r'data-ref="([^"]+)"><title>[^<]*</title><rect x="(\d+)"', svg)}
    assert x["base@v1"] < x["cold@v1"] < x["grpo@v1"] < x["pick@v1"] < x["final@v1"]  # inputs left of their users
    assert x["shapes@v1"] == x["base@v1"]  # both are sft's inputs, at the deepest layer


def test_missing_and_damaged_inputs_are_shown_not_fatal(pipeline, tmp_path):
    shutil.rmtree(pipeline.store.root / "base")
    cold = pipeline.store.root / "cold" / "v1" / "loss.png"
    cold.write_bytes(png("white"))  # same name, other bytes: not what the manifest says
    page = write_report(pipeline, tmp_path)
    assert '<g class="node missing" data-ref="base@v1">' in page
    assert "missing from the store" in page
    assert "loss.png is corrupted (sha256 mismatch)" in page
    assert base64.b64encode(cold.read_bytes()).decode() not in page
    # the graph still has every node and edge; the missing one keeps its edge to cold
    assert page.count('class="edge"') == 7 and 'data-from="base@v1" data-to="cold@v1"' in page


class Structure(HTMLParser):
    """Fails on what an HTML5 parser would silently repair: unclosed or misnested elements."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base", "embed", "track"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.doctype, self.ids = [], [], None, []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id"]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id"]
        if tag in self.VOID or self.stack and "svg" in self.stack:
            return
        self.errors.append(f"self-closed <{tag}/> outside svg")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_page_is_well_formed_html5(pipeline, tmp_path):
    page = write_report(pipeline, tmp_path)
    checker = Structure()
    checker.feed(page)
    checker.close()
    assert checker.doctype == "DOCTYPE html" and page.startswith("<!DOCTYPE html>")
    assert checker.errors == [] and checker.stack == []
    assert len(checker.ids) == len(set(checker.ids))  # the graph's links go to one place each
    for target in re.findall(r'href="#([^"]+)"', page):
        assert target in checker.ids


def test_output_path_kinds_and_errors(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = pipeline("report", "cold")
    assert code == 0 and (tmp_path / "report-cold-v1.html").is_file(), err
    (tmp_path / "pages").mkdir()
    code, out, err = pipeline("report", "final-ev", "--out", tmp_path / "pages")
    assert code == 0 and (tmp_path / "pages" / "report-final-ev-v1.html").is_file(), err
    page = (tmp_path / "pages" / "report-final-ev-v1.html").read_text()
    assert "62.5%" in page and "cold-ev@v1" in page and "outsider" not in page  # an eval: its model's lineage
    page = write_report(pipeline, tmp_path, "shapes", "data.html")
    assert "No eval artifact" in page and page.count('class="node"') == 1
    assert not list(tmp_path.rglob("*.tmp"))
    for args, message in [
        (["nosuch"], "error: nosuch: no artifact named 'nosuch'"),
        (["final", "--out", tmp_path / "no" / "x.html"], f"error: --out (out) {tmp_path / 'no' / 'x.html'}: directory"),
        (["final", "--out", " "], "error: --out (out) is empty"),
    ]:
        code, out, err = pipeline("report", *args)
        assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    # a write that fails leaves the previous page whole and no temporary file
    before = (tmp_path / "report-cold-v1.html").read_bytes()
    (tmp_path / "report-cold-v1.html.tmp").mkdir()
    code, out, err = pipeline("report", "cold")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert (tmp_path / "report-cold-v1.html").read_bytes() == before


# ---- a real page in a real browser ------------------------------------------------------------


class Browser:
    """Headless Chromium driven through the DevTools protocol over a pipe (fd 3/4, NUL-separated
    JSON), so no websocket client is needed."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", "--window-size=1280,900"]

    def __init__(self, profile: Path):
        to_chrome, self.tx = os.pipe()
        self.rx, from_chrome = os.pipe()

        def wire():  # the protocol's fixed descriptors in the child (the test starts no threads)
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self.proc = subprocess.Popen([str(CHROMIUM), *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=wire, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self.buf, self.next_id, self.events = b"", 0, []

    def send(self, method, session=None, timeout=60, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self.tx, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self.next_id, timeout)
        assert "error" not in reply, (method, reply["error"])
        return reply["result"]

    def wait(self, match, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if match(msg):
                    return msg
            left = deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            if select.select([self.rx], [], [], left)[0]:
                chunk = os.read(self.rx, 1 << 20)
                assert chunk, "Chromium closed the pipe"
                self.buf += chunk

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.tx)
        os.close(self.rx)


PROBE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({complete: i.complete, w: i.naturalWidth, alt: i.alt})),
  nodes: document.querySelectorAll('svg.lineage g.node').length,
  edges: document.querySelectorAll('svg.lineage path.edge').length,
  details: document.querySelectorAll('details').length,
  scripts: document.scripts.length,
  title: document.title})"""


def check_in_browser(page: Path, profile: Path, screenshot: Path) -> dict:
    """Load `page` from disk with the network emulated off; returns what the page holds and
    every error the browser reported. Writes a full-page screenshot."""
    b = Browser(profile)
    try:
        target = b.send("Target.createTarget", url="about:blank")["targetId"]
        session = b.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.send(f"{domain}.enable", session)
        b.send("Network.emulateNetworkConditions", session, offline=True, latency=0, downloadThroughput=-1,
               uploadThroughput=-1)
        b.send("Page.navigate", session, url=page.resolve().as_uri())
        b.wait(lambda m: m.get("method") == "Page.loadEventFired")
        probe = b.send("Runtime.evaluate", session, expression=PROBE, returnByValue=True)
        shot = b.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        errors = [e for e in b.events if e["method"] == "Runtime.exceptionThrown"
                  or e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
                  or e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
                  or e["method"] == "Network.loadingFailed"]
        requests = [e["params"]["request"]["url"][:60] for e in b.events if e["method"] == "Network.requestWillBeSent"]
        return json.loads(probe["result"]["value"]) | {"errors": errors, "requests": requests}
    finally:
        b.close()


def build_real_pipeline(cli):
    for args in [
        ("init", "tiny", "--name", "tiny"),
        ("data", "synth", "--name", "shapes", "--n", "40", "--messages", "think"),
        ("sft", "--model", "tiny", "--data", "shapes", "--preset", "cold-start", "--batch-size", "4",
         "--max-steps", "3", "--save-steps", "50", "--name", "cold"),
        ("eval", "mmmu", "--model", "cold", "--data", "shapes", "--max-new-tokens", "8", "--temperature", "0",
         "--name", "cold-ev"),
    ]:
        code, _, err = cli(*args)
        assert code == 0, err


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)")
def test_real_pipeline_page_in_headless_chromium(cli, tmp_path):
    build_real_pipeline(cli)
    page = Path(write_report(cli, tmp_path, "cold", "cold.html") and tmp_path / "cold.html")
    seen = check_in_browser(page, tmp_path / "profile", tmp_path / "cold.png")
    assert seen["errors"] == [] and seen["scripts"] == 0
    fetched = [u for u in seen["requests"] if not u.startswith("data:image/png;base64,")]
    assert fetched == [page.resolve().as_uri()[:60]]  # the page itself, nothing else
    assert len(seen["images"]) == 2 and all(i["complete"] and i["w"] > 0 for i in seen["images"])  # loss, chart
    assert seen["nodes"] == 3 and seen["edges"] == 2 and seen["title"] == "r1v3 report: cold@v1"
    shot = Image.open(tmp_path / "cold.png").convert("L")
    assert shot.width >= 1000 and shot.height > 900
    lo, hi = shot.getextrema()
    assert hi - lo > 100 and len(shot.getcolors(1 << 16)) > 20  # drawn, not a blank page


def test_crafted_cycle_and_deep_chain_are_laid_out():
    """Only a crafted manifest makes a cycle; the layout must still end, one column per depth."""
    from stages.report import graph, layers, lineage_svg

    tree = {"ref": "a@v1", "kind": "model", "stage": "sft", "inputs": [
        {"ref": "b@v1", "kind": "model", "stage": "sft", "inputs": [{"ref": "a@v1", "cycle": True, "inputs": []}]}]}
    nodes, edges = graph(tree)
    assert list(nodes) == ["a@v1", "b@v1"] and edges == [("b@v1", "a@v1", False), ("a@v1", "b@v1", False)]
    assert layers(nodes, edges) == {"a@v1": 0, "b@v1": 1}
    assert lineage_svg(nodes, edges).count('class="edge"') == 2
    chain = {"ref": "n0@v1", "kind": "model", "stage": "s", "inputs": []}
    for i in range(1, 40):
        chain = {"ref": f"n{i}@v1", "kind": "model", "stage": "s", "inputs": [chain]}
    nodes, edges = graph(chain)
    assert sorted(layers(nodes, edges).values()) == list(range(40))
