"""`r1v3 report REF`: one self-contained HTML page about an artifact, for a person to read.

The page holds the artifact's lineage back to its base model and data as an inline SVG graph
(layered by depth, laid out here), each artifact's settings (collapsible) and metrics, every PNG
of the lineage (loss and reward curves, entropy-vs-accuracy, accuracy charts) as data: URIs, and
the scores of every eval in the store whose inputs name a model of the lineage (evals are not
inputs of a model, so they are found by looking at every eval's inputs).

It opens offline: no script, no external URL (a Content-Security-Policy forbids any fetch but
data: images), and every text from a manifest or a scores file is escaped, because a manifest
may hold anything. An input deleted from the store or damaged shows as such in the graph.
The file is written beside its final path and renamed into place, so a reader never sees half.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from r1v3 import __version__, benchmarks, jsonio
from r1v3.artifacts import Artifact, Store, clip, printable, write_atomic
from r1v3.config import Settings, setting
from r1v3.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 8 << 20  # a matplotlib chart is tens of KB; a bigger PNG is not one of ours
MAX_SCORES_BYTES = 16 << 20
MAX_IMAGES = 24  # per artifact: an RL run with a plot per checkpoint stays readable
MAX_TEXT = 400  # characters of one shown value
MAX_KEYS = 200  # rows of one settings or metrics table
MAX_ROWS = 100  # rows of a list-of-records table (RL checkpoints, select-ckpt figures)
NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 230, 52, 70, 22, 16
KIND_COLOURS = {"model": "#dbeafe", "dataset": "#dcfce7", "run": "#fef3c7", "selection": "#f3e8ff", "eval": "#fee2e2"}


@dataclass
class Config(Settings):
    STAGE = "report"

    ref: str = setting(argument=True, help="Artifact to report on (NAME, NAME@vN or a path); a model above all.", artifact="input")
    out: Optional[str] = setting(None, metavar="PATH", shown="report-<name>-v<N>.html here",
                                 help="Where to write the HTML page (a directory: the default name inside it).")


def run(cfg: Config, store: Store) -> Path:
    art = store.resolve(cfg.ref)
    out = _out_path(cfg.out, art)
    page = build(store, art)
    try:
        # ASCII with character references: the bytes do not depend on the locale's encoding
        write_atomic(out, page.encode("ascii", "xmlcharrefreplace").decode("ascii"))
    except BaseException:
        with contextlib.suppress(OSError):  # the first error is the one to report
            out.with_name(out.name + ".tmp").unlink(missing_ok=True)
        raise
    return out


def _out_path(out: Optional[str], art: Artifact) -> Path:
    default = f"report-{art.name}-v{art.version}.html"
    if out is None:
        return Path.cwd() / default
    if not out.strip():
        raise UserError("--out (out) is empty: give a file path for the HTML page")
    path = Path(out).expanduser()
    if path.is_dir():
        return path / default
    if not path.parent.is_dir():
        raise UserError(f"--out (out) {out}: directory {path.parent} does not exist")
    return path


# ---- gathering --------------------------------------------------------------------------------


def build(store: Store, art: Artifact) -> str:
    """The whole page for `art`, read from `store`."""
    damaged: list[str] = []
    known = {a.ref: a for a in store.list(damaged=damaged)}
    known[art.ref] = art  # it may be a directory outside the store
    nodes, edges = graph(store.lineage(art))
    evals = evals_of(known, nodes, art)
    arts = [known[r] for r, n in nodes.items() if r in known and not _problem(n)]
    parts = [
        _header(art, nodes, evals),
        f'<section id="lineage"><h2>Lineage</h2>{lineage_svg(nodes, edges)}{_legend()}</section>',
        _evals_section(evals),
        '<section id="artifacts"><h2>Artifacts</h2>',
        *(_artifact_section(i, nodes[r], known.get(r), edges) for i, r in enumerate(nodes)),
        "</section>",
    ]
    title = f"r1v3 report: {art.ref}"
    return _page(title, "\n".join(parts), f"{len(arts)} of {len(nodes)} artifacts readable")


def graph(tree: dict) -> tuple[dict, list]:
    """(ref -> node, [(input ref, consumer ref, changed)]) from Store.lineage's tree: one node per
    artifact however often it is cited, one edge per input entry of a manifest."""
    nodes: dict[str, dict] = {}
    edges: list[tuple[str, str, bool]] = []

    def visit(n: dict) -> None:  # the tree is at most MAX_LINEAGE_DEPTH deep
        info = nodes.setdefault(n["ref"], {"ref": n["ref"]})
        for key in ("kind", "stage", "missing", "damaged", "truncated"):
            if key in n:
                info[key] = n[key]
        for child in n["inputs"]:
            edges.append((child["ref"], n["ref"], bool(child.get("changed"))))
            visit(child)

    visit(tree)
    return nodes, edges


def evals_of(known: dict, nodes: dict, root: Artifact) -> list[Artifact]:
    """Eval artifacts whose inputs name a model of the lineage (or the root, if it is an eval)."""
    models = {r for r, n in nodes.items() if n.get("kind") == "model"}
    found = [a for a in known.values() if a.kind == "eval"
             and (a.ref == root.ref or any(i["ref"] in models for i in a.manifest.get("inputs", [])))]
    return sorted(found, key=lambda a: (a.manifest.get("created", ""), a.ref))


def _problem(node: dict) -> str:
    if node.get("missing"):
        return "missing from the store"
    if node.get("damaged"):
        return f"damaged: {node['damaged']}"
    if node.get("truncated"):
        return "deeper than the lineage is followed"
    return ""


def read_file(art: Artifact, rel: str, limit: int) -> tuple[Optional[bytes], str]:
    """(bytes, "") of a file the manifest lists, checked against its sha256, or (None, why not)."""
    meta = art.manifest["files"].get(rel)
    if meta is None:
        return None, f"{rel} is not in the manifest"
    if meta["size"] > limit:
        return None, f"{rel} is larger than {limit >> 20} MiB; not embedded"
    path = art.path / rel
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # no link, no FIFO stall
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        return None, f"{rel} cannot be read: {e.strerror or e}"
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        return None, f"{rel} is corrupted (sha256 mismatch)"
    return data, ""


def read_scores(art: Artifact) -> tuple[Optional[dict], str]:
    raw, why = read_file(art, "scores.json", MAX_SCORES_BYTES)
    if raw is None:
        return None, why
    try:
        scores = jsonio.loads(raw, f"{art.ref}: scores.json")
    except UserError as e:
        return None, str(e)
    if not isinstance(scores, dict) or not isinstance(scores.get("overall"), dict):
        return None, "scores.json has no overall score"
    return scores, ""


# ---- HTML pieces ------------------------------------------------------------------------------


def esc(value, limit: int = MAX_TEXT) -> str:
    """Any value as escaped text, cut to `limit` characters."""
    return html.escape(clip(value if isinstance(value, str) else _plain(value), limit), quote=True)


def _plain(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _pct(value) -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{100 * value:.1f}%" if ok else "n/a"


def _header(art: Artifact, nodes: dict, evals: list) -> str:
    m = art.manifest
    rows = [("kind", art.kind), ("stage", m.get("stage", "?")), ("created", m.get("created", "?")),
            ("digest", art.digest), ("path", str(art.path)), ("toolkit", m.get("toolkit_version", "?"))]
    meta = "".join(f"<tr><th>{k}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    missing = [r for r, n in nodes.items() if _problem(n)]
    note = (f'<p class="warn">{len(missing)} artifact(s) of the lineage cannot be shown: '
            f'{esc(", ".join(missing))}</p>') if missing else ""
    return (f"<header><h1>{esc(art.ref)}</h1><table class=\"kv\">{meta}</table>"
            f"<p>lineage: {len(nodes)} artifact(s); evaluations of its models: {len(evals)}. "
            f"Written by r1v3 {esc(__version__)} at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.</p>"
            f"{note}</header>")


def _legend() -> str:
    items = "".join(f'<span class="chip" style="background:{c}">{k}</span>' for k, c in KIND_COLOURS.items())
    return (f'<p class="legend">{items} <span class="chip missing">missing or damaged</span> '
            "Arrows run from an input to the artifact made from it; a dashed arrow: the input changed since use.</p>")


def layers(nodes: dict, edges: list) -> dict:
    """ref -> depth: the longest input path from the root (at 0), so a base model sits at the far
    end. Bounded by the node count, which also stops a crafted cycle."""
    root = next(iter(nodes))
    depth = {root: 0}
    for _ in range(len(nodes)):
        moved = False
        for src, dst, _ in edges:
            if dst in depth and depth.get(src, -1) < depth[dst] + 1 < len(nodes):
                depth[src] = depth[dst] + 1
                moved = True
        if not moved:
            break
    return {r: depth.get(r, 0) for r in nodes}


def lineage_svg(nodes: dict, edges: list) -> str:
    """Columns by depth, inputs on the left, the reported artifact on the right."""
    depth = layers(nodes, edges)
    deepest = max(depth.values())
    place, rows = {}, {}
    for ref in nodes:
        col = deepest - depth[ref]
        row = rows[col] = rows.get(col, -1) + 1
        place[ref] = (PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
    width = PAD * 2 + (deepest + 1) * NODE_W + deepest * GAP_X
    # GAP_Y more at the bottom: the lane under the last row for edges that skip a column
    height = PAD * 2 + (max(rows.values()) + 1) * (NODE_H + GAP_Y)
    out = [(f'<svg class="lineage" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="lineage graph">'),
           ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#555"/></marker></defs>')]
    for src, dst, changed in edges:
        out.append(f'<path class="edge{" changed" if changed else ""}" data-from="{esc(src)}" data-to="{esc(dst)}" '
                   f'd="{_edge_path(place[src], place[dst])}" marker-end="url(#arrow)"/>')
    for i, (ref, node) in enumerate(nodes.items()):
        out.append(_svg_node(i, node, *place[ref]))
    out.append("</svg>")
    return "\n".join(out)


def _edge_path(src: tuple, dst: tuple) -> str:
    """From the right side of `src` to the left side of `dst`: a curve between neighbouring
    columns; otherwise down into the gap under the lower row, along it, and up, so the edge
    does not run behind the artifacts of the columns it skips."""
    x1, y1, x2, y2 = src[0] + NODE_W, src[1] + NODE_H / 2, dst[0], dst[1] + NODE_H / 2
    if x2 - x1 == GAP_X:
        mid = GAP_X / 2
        return f"M{x1:g} {y1:g}C{x1 + mid:g} {y1:g} {x2 - mid:g} {y2:g} {x2:g} {y2:g}"
    lane, r = max(y1, y2) + NODE_H / 2 + GAP_Y / 2, GAP_X / 4
    return (f"M{x1:g} {y1:g}C{x1 + r:g} {y1:g} {x1 + r:g} {lane:g} {x1 + 2 * r:g} {lane:g}"
            f"L{x2 - 2 * r:g} {lane:g}C{x2 - r:g} {lane:g} {x2 - r:g} {y2:g} {x2:g} {y2:g}")


def _svg_node(i: int, node: dict, x: int, y: int) -> str:
    problem = _problem(node)
    fill = "#fff" if problem else KIND_COLOURS.get(node.get("kind"), "#eee")
    sub = problem or f"{node.get('kind', '?')} from {node.get('stage', '?')}"
    tip = f"{node['ref']}: {sub}"
    return (f'<a href="#art-{i}"><g class="node{" missing" if problem else ""}" data-ref="{esc(node["ref"])}">'
            f"<title>{esc(tip)}</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}"/>'
            f'<text x="{x + 10}" y="{y + 21}" class="ref">{esc(node["ref"], 30)}</text>'
            f'<text x="{x + 10}" y="{y + 40}" class="sub">{esc(sub, 34)}</text></g></a>')


def value_html(value, depth: int = 0) -> str:
    """A config or metrics value: mappings and lists of records as tables, the rest as text."""
    if isinstance(value, dict) and value and depth < 3:
        return kv_table(value, depth + 1)
    if isinstance(value, list) and value and depth < 3 and all(isinstance(v, dict) for v in value):
        return _records(value, depth + 1)
    if isinstance(value, list) and len(value) > 12:
        return f'<span class="dim">{len(value)} items:</span> {esc(value, 200)}'
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return esc(", ".join(value)) if value else '<span class="dim">none</span>'
    return esc(value)


def kv_table(mapping: dict, depth: int = 0) -> str:
    rows = [f"<tr><th>{esc(k, 80)}</th><td>{value_html(v, depth)}</td></tr>"
            for k, v in list(mapping.items())[:MAX_KEYS]]
    more = len(mapping) - MAX_KEYS
    if more > 0:
        rows.append(f'<tr><td colspan="2" class="dim">... and {more} more</td></tr>')
    return f'<table class="kv">{"".join(rows)}</table>'


def _records(records: list, depth: int) -> str:
    cols: list = []
    for r in records[:MAX_ROWS]:
        cols += [k for k in r if k not in cols][: 16 - len(cols)]
    head = "".join(f"<th>{esc(c, 40)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{value_html(r.get(c, ''), depth + 1)}</td>" for c in cols) + "</tr>"
                   for r in records[:MAX_ROWS])
    more = f'<p class="dim">... and {len(records) - MAX_ROWS} more rows</p>' if len(records) > MAX_ROWS else ""
    return f'<table class="grid"><tr>{head}</tr>{body}</table>{more}'


def images_html(art: Artifact) -> str:
    """Every PNG the artifact lists, embedded; a file that is not what its manifest says is named, not shown."""
    pngs = sorted(rel for rel in art.manifest["files"] if rel.lower().endswith(".png"))
    out = []
    for rel in pngs[:MAX_IMAGES]:
        raw, why = read_file(art, rel, MAX_IMAGE_BYTES)
        if raw is not None and not raw.startswith(PNG_MAGIC):
            raw, why = None, f"{rel} is not a PNG"
        if raw is None:
            out.append(f'<p class="warn">{esc(why)}</p>')
            continue
        data = base64.b64encode(raw).decode("ascii")
        out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(rel)} of {esc(art.ref)}">'
                   f"<figcaption>{esc(rel)}</figcaption></figure>")
    if len(pngs) > MAX_IMAGES:
        out.append(f'<p class="dim">... and {len(pngs) - MAX_IMAGES} more PNG files</p>')
    return f'<div class="figures">{"".join(out)}</div>' if out else ""


def tracking_html(art: Artifact) -> str:
    """Where a run's TensorBoard event files are (`--report-to tensorboard`): the page cannot show them."""
    events = [rel for rel in art.manifest["files"] if rel.startswith("tensorboard/")]
    if not events:
        return ""
    return (f'<p>TensorBoard event files: {len(events)} in <code>tensorboard/</code>; view them with '
            f'<code>tensorboard --logdir {esc(str(art.path / "tensorboard"))}</code></p>')


def _artifact_section(i: int, node: dict, art: Optional[Artifact], edges: list) -> str:
    users = [dst for src, dst, _ in edges if src == node["ref"]]
    used_by = f"<p>input of {esc(', '.join(dict.fromkeys(users)))}</p>" if users else ""
    problem = _problem(node)
    if problem or art is None:
        return (f'<section id="art-{i}" class="artifact missing"><h3>{esc(node["ref"])}</h3>'
                f'<p class="warn">{esc(problem or "not in the store")}</p>{used_by}</section>')
    m = art.manifest
    inputs = "".join(f"<li>{esc(inp['ref'])} ({esc(inp['kind'])})</li>" for inp in m.get("inputs", []))
    config = m.get("config") or {}
    took = f", took {m['seconds']:.0f} s" if "seconds" in m else ""
    return (f'<section id="art-{i}" class="artifact"><h3>{esc(art.ref)} <small>{esc(art.kind)} from '
            f'{esc(m.get("stage", "?"))}, {esc(m.get("created", "?"))}{took}</small></h3>{used_by}'
            + (f"<p>inputs:</p><ul>{inputs}</ul>" if inputs else "<p>no inputs: a base model or raw data</p>")
            + images_html(art)
            + tracking_html(art)
            + (f"<details open><summary>metrics ({len(art.metrics)})</summary>{kv_table(art.metrics)}</details>"
               if art.metrics else "")
            + (f"<details><summary>settings ({len(config)})</summary>{kv_table(config)}</details>" if config else "")
            + "</section>")


def _evals_section(evals: list) -> str:
    if not evals:
        return ('<section id="evals"><h2>Evaluations</h2><p>No eval artifact in the store names a model of this '
                "lineage (<code>r1v3 eval mmmu --model REF</code> makes one).</p></section>")
    rows, details = [], []
    for j, ev in enumerate(evals):
        scores, why = read_scores(ev)
        rows.append(_eval_row(j, ev, scores, why))
        details.append(_eval_detail(j, ev, scores))
    head = "".join(f"<th>{h}</th>" for h in ("eval", "model", "data", "style", "samples", "n", "overall",
                                              "parse failures"))
    return (f'<section id="evals"><h2>Evaluations</h2><table class="grid"><tr>{head}</tr>{"".join(rows)}</table>'
            f'{"".join(details)}</section>')


def _eval_row(j: int, ev: Artifact, scores: Optional[dict], why: str) -> str:
    inputs = {i["kind"]: i["ref"] for i in ev.manifest.get("inputs", [])}
    config = ev.manifest.get("config") or {}
    if scores is None:  # the manifest's metrics still say the overall accuracy
        cells = [ev.metrics.get("n", "?"), _pct(ev.metrics.get("acc")),
                 f"{_pct(ev.metrics.get('parse_failure_rate'))} ({why})"]
    else:
        overall, pf = scores["overall"], scores.get("parse_failures")
        pf = pf if isinstance(pf, dict) else {}
        cells = [overall.get("n", "?"), _pct(overall.get("acc")), f"{_plain(pf.get('n', '?'))} ({_pct(pf.get('rate'))})"]
    first = [f'<a href="#eval-{j}">{esc(ev.ref)}</a>', esc(inputs.get("model", "-")), esc(inputs.get("dataset", "-")),
             esc(config.get("style", "?")), esc(config.get("samples", "?"))]
    if scores is not None:  # what was scored, --responses included, as scores.json records it
        first[3:5] = esc(scores.get("style", config.get("style", "?"))), esc(scores.get("samples", config.get("samples", "?")))
    return "<tr>" + "".join(f"<td>{c}</td>" for c in first + [esc(c) for c in cells]) + "</tr>"


def _eval_detail(j: int, ev: Artifact, scores: Optional[dict]) -> str:
    tables = []
    bench = benchmarks.of_stage(ev.manifest.get("stage"))
    # each benchmark's own breakdown (MMMU: discipline, subject; MathVista: task, skill, ...)
    for label, group in benchmarks.groups(bench, scores or {}):
        body = "".join(f"<tr><td>{esc(name or '(none)')}</td><td>{esc('?' if n is None else n)}</td>"
                       f"<td>{_pct(acc)}</td></tr>" for name, (acc, n) in list(group.items())[:MAX_KEYS])
        tables.append(f'<table class="grid"><tr><th>{esc(label)}</th><th>n</th><th>accuracy</th></tr>{body}</table>')
    extra = {k: v for k, v in (scores or {}).items() if "@" in k}
    k_line = f"<p>{esc(', '.join(f'{k} {_pct(v)}' for k, v in extra.items()))}</p>" if len(extra) > 1 else ""
    config = ev.manifest.get("config") or {}
    settings = f"<details><summary>settings ({len(config)})</summary>{kv_table(config)}</details>" if config else ""
    return (f'<details id="eval-{j}" open><summary>{esc(ev.ref)}: {esc(bench.NAME)} per category</summary>{k_line}'
            f'<div class="cols">{"".join(tables)}</div>{images_html(ev)}{settings}</details>')


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 8px}h2{border-bottom:1px solid #ccc;margin-top:32px}h3 small{font-weight:normal;color:#666}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
table.kv th{background:#f6f6f6;font-weight:600}table.grid th{background:#f0f0f0}
td{font-variant-numeric:tabular-nums;word-break:break-word;max-width:600px}
.warn{color:#b00020}.dim{color:#777}.chip{padding:1px 8px;border:1px solid #999;border-radius:4px;margin-right:4px}
.chip.missing,g.node.missing rect{border-style:dashed;stroke:#b00020;stroke-dasharray:5 3}
section.artifact{border:1px solid #e2e2e2;border-radius:6px;padding:4px 14px;margin:14px 0}
section.missing{border-color:#b00020}
svg.lineage{max-width:100%;height:auto;border:1px solid #eee;background:#fcfcfc}
g.node rect{stroke:#666}g.node text.ref{font-weight:600;font-size:13px}g.node text.sub{font-size:11px;fill:#444}
path.edge{fill:none;stroke:#555;stroke-width:1.4}path.edge.changed{stroke-dasharray:6 4;stroke:#c05600}
.figures{display:flex;flex-wrap:wrap;gap:12px}figure{margin:6px 0}figure img{max-width:560px;border:1px solid #eee}
figcaption{color:#555;font-size:12px}.cols{display:flex;flex-wrap:wrap;gap:24px}details{margin:8px 0}
summary{cursor:pointer;font-weight:600}
"""


def _page(title: str, body: str, status: str) -> str:
    # no fetch of any kind and no script, whatever a crafted text might slip through
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
            f'<footer class="dim"><p>{esc(status)}</p></footer>\n</body>\n</html>\n')


def report(path: Path, console) -> None:
    console.print(f"wrote {printable(str(path))}", markup=False, highlight=False, soft_wrap=True)
