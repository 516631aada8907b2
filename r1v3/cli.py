"""The `r1v3` command: one thin command per stage (options -> config -> stage.run).

Mistakes a user can make print one `error: ...` line and exit 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from r1v3 import __version__, config
from r1v3.artifacts import Store, default_store
from r1v3.errors import UserError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="r1v3",
    help=(
        "Reproduce the Skywork-R1V3 post-training recipe on your own vision-language model.\n\n"
        "Every stage reads artifacts from the store and publishes a new versioned one "
        "(STORE/<name>/v<N>). Refer to artifacts as NAME, NAME@vN or a directory path."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make, import and inspect problem datasets.", no_args_is_help=True)
artifacts_app = typer.Typer(help="List, inspect, verify and trace artifacts.", no_args_is_help=True)
init_app = typer.Typer(help="Build the embedded default models (tiny, smol) offline.", no_args_is_help=True)
app.add_typer(init_app, name="init")
app.add_typer(data_app, name="data")
app.add_typer(artifacts_app, name="artifacts")

STATE = {"store": None}

ConfigOpt = typer.Option(None, "--config", "-c", help="Recipe YAML (the stage's section, or the whole file).")
OverridesArg = typer.Argument(None, help="Dotted key=value overrides, e.g. seed=3 n=200.", show_default=False)
SeedOpt = typer.Option(None, "--seed", help="Random seed (default from the recipe, else 0).")


def store() -> Store:
    return Store(STATE["store"] or default_store())


def _print_version(value: bool) -> None:
    if value:
        console.print(f"r1v3 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    store_dir: Optional[Path] = typer.Option(
        None, "--store", envvar="R1V3_STORE", help="Artifact store directory (default: ./artifacts)."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    STATE["store"] = store_dir


def _run(stage_module, stage: str, cfg_path, options: dict, overrides):
    cfg = config.load(stage_module.Config, stage=stage, path=cfg_path, options=options, overrides=overrides or [])
    art = stage_module.run(cfg, store())
    console.print(f"[green]published[/green] {art.ref} ({art.kind}) at {art.path}")
    return art


# ---- models ----------------------------------------------------------------------------------


@init_app.command("tiny")
def init_tiny(
    name: str = typer.Option(..., "--name", help="Artifact name for the model."),
    family: Optional[str] = typer.Option(None, "--family", help="internvl, qwen2_vl, qwen2_5_vl, qwen3_vl, llava, idefics3."),
    seed: Optional[int] = SeedOpt,
    cfg: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
):
    """A random-weight model of a supported family with an offline tokenizer (about a second)."""
    from stages import init_model

    _run(init_model, "init", cfg, {"name": name, "model": "tiny", "family": family, "seed": seed}, overrides)


@init_app.command("smol")
def init_smol(
    name: str = typer.Option(..., "--name", help="Artifact name for the model."),
    seed: Optional[int] = SeedOpt,
    cfg: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
):
    """A real small VLM: SmolLM2-135M-Instruct + a small vision tower + a fresh connector (InternVL family)."""
    from stages import init_model

    _run(init_model, "init", cfg, {"name": name, "model": "smol", "seed": seed}, overrides)


@app.command("import-model")
def import_model(
    path: Path = typer.Argument(..., help="A local Hugging Face model directory (config.json + *.safetensors)."),
    name: str = typer.Option(..., "--name", help="Artifact name."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code (recorded)."),
    link: bool = typer.Option(False, "--link", help="Hard-link the files instead of copying (same filesystem; the artifact then shares the source's bytes)."),
):
    """Wrap a local Hugging Face model directory (a VLM or a text LLM) as a model artifact."""
    from stages import import_model as stage

    _run(stage, "import-model", None, {"path": str(path), "name": name, "trust_remote_code": trust_remote_code, "link": link}, [])


# ---- data ------------------------------------------------------------------------------------


@data_app.command("synth")
def data_synth(
    name: str = typer.Option(..., "--name", help="Artifact name for the dataset."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of problems over all splits (default: 500)."),
    seed: Optional[int] = SeedOpt,
    messages: Optional[str] = typer.Option(
        None, "--messages", metavar="STYLE",
        help="Add a `messages` conversation per problem for chat SFT. think: the reasoning prompt and a template "
        "teacher's <think> trace + \\boxed{answer}; brief: the same with a one-line trace; direct: the official "
        "prompt and the bare answer; caption: describe the image -> its short caption (connector alignment).",
    ),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated subset of counting,color,spatial,arithmetic,chart (default: all)."),
    difficulty: Optional[str] = typer.Option(None, "--difficulty", help="normal, hard or normal,hard (default: both)."),
    cfg: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
):
    """Synthetic visual reasoning problems drawn with Pillow (counting, colour, position, arithmetic, charts)."""
    from stages import synth

    options = {"name": name, "n": n, "seed": seed, "messages": messages, "tasks": tasks, "difficulty": difficulty}
    _run(synth, "synth", cfg, options, overrides)


@data_app.command("import")
def data_import(
    path: Path = typer.Argument(..., help="A .jsonl (image paths relative to it), .parquet, or a local Hugging Face dataset directory."),
    name: str = typer.Option(..., "--name", help="Artifact name for the dataset."),
    split: Optional[str] = typer.Option(None, "--split", help="The split to take from a multi-split source."),
    cfg: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
):
    """Import your own problem rows (validated, images embedded) as a dataset artifact."""
    from stages import data_import

    _run(data_import, "data-import", cfg, {"path": str(path), "name": name, "split": split}, overrides)


@data_app.command("show")
def data_show(
    ref: str = typer.Argument(..., help="Dataset artifact reference."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to show (default: the first)."),
    n: int = typer.Option(5, "--n", help="Rows to print."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Save a contact sheet PNG of the images here."),
):
    """Print a few rows of a dataset and optionally save a contact sheet of its images."""
    from r1v3 import data

    if n < 0:
        raise UserError(f"--n must be 0 or more, got {n}")
    art = store().resolve(ref, kind="dataset")
    splits = data.list_splits(art.path)
    split = split or ("train" if "train" in splits else splits[0])
    if split not in splits:
        raise UserError(f"{ref}: no split {split!r} (has {', '.join(splits)})")
    rows = data.read_split(art.path, split)
    console.print(f"[bold]{art.ref}[/bold] \\[{split}] {len(rows)} rows (splits: {', '.join(splits)})")
    for row in rows[:n]:
        options = "  ".join(f"({data.LETTERS[i]}) {o}" for i, o in enumerate(row["options"]))
        caption = row.get("caption") or ""
        console.print(
            f"[cyan]{row['id']}[/cyan] {row['subject']} {row['question_type']} {row.get('difficulty') or ''}"
            f" images={len(row['images'])}\n  Q: {row['question']}"
            + (f"\n  {options}" if options else "")
            + f"\n  answer: [green]{row['answer']}[/green]"
            + (f"\n  caption: [dim]{caption[:160]}{'...' if len(caption) > 160 else ''}[/dim]" if caption else ""),
            highlight=False,
        )
    if sheet is not None:
        data.contact_sheet(rows, sheet, n=max(n, 16))
        console.print(f"contact sheet: {sheet}")


@data_app.command("mmmu")
def data_mmmu(
    name: str = typer.Option(..., "--name", help="Artifact name for the dataset."),
    path: Optional[Path] = typer.Option(None, "--path", help="Local MMMU copy laid out as on the hub (<Subject>/<split>-*.parquet)."),
    split: Optional[str] = typer.Option(None, "--split", help="dev | validation (default: validation); test answers are withheld by the benchmark."),
    subjects: Optional[List[str]] = typer.Option(None, "--subjects", help="Subject folder or short name; repeat for several (default: all 30)."),
    from_hub: bool = typer.Option(False, "--from-hub", help="Download from the hub instead of --path (needs network)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub dataset revision to pin (default: main; the commit is recorded)."),
    cfg: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
):
    """Import MMMU (all images in order, <image N> placeholders mapped) as a dataset artifact."""
    from stages import mmmu_import

    options = {"name": name, "path": str(path) if path else None, "split": split, "subjects": subjects or None,
               "from_hub": from_hub or None, "revision": revision}
    _run(mmmu_import, "data-mmmu", cfg, options, overrides)


eval_app = typer.Typer(help="Evaluate models on benchmarks.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("mmmu")
def eval_mmmu(
    model: Optional[str] = typer.Option(None, "--model", help="Model artifact to evaluate."),
    data_ref: Optional[str] = typer.Option(None, "--data", help="Dataset artifact (from `r1v3 data mmmu`, or any problem dataset)."),
    name: Optional[str] = typer.Option(None, "--name", help="Eval artifact name (optional with --responses)."),
    responses: Optional[Path] = typer.Option(None, "--responses", help="Re-score saved responses: <Subject>/output.json dir or one JSON list."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (default: validation)."),
    subjects: Optional[List[str]] = typer.Option(None, "--subjects", help="Only these subjects; repeat for several (default: all in the split)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N items, for quick checks (default: all)."),
    style: Optional[str] = typer.Option(None, "--style", help="official (the benchmark's prompt) | reasoning (<think> + \\boxed{}) (default: reasoning; official for --responses)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation budget (default: 16384 reasoning, 128 official)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature; 0 is greedy (default: 1.0 reasoning, as in the paper; 0 official)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling (default: 1.0)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Responses per item k; reports mean@k and pass@k (default: 1; the paper: 5)."),
    seed: Optional[int] = SeedOpt,
    backend: Optional[str] = typer.Option(None, "--backend", help="auto | transformers | vllm (default: auto = vllm when CUDA and vLLM are present)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Prompts per batch, transformers backend (default: 8)."),
    tensor_parallel_size: Optional[int] = typer.Option(None, "--tensor-parallel-size", help="GPUs per model, vllm backend (default: 1)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted eval of the same name without redoing finished items."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
    blank_images: bool = typer.Option(False, "--blank-images", help="Replace every image with a white one of its size: the score without looking (a blind baseline)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON on stdout."),
    cfg: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
):
    """MMMU accuracy by the official rules: per subject, per discipline, overall (weighted by items)."""
    from stages import eval_mmmu as stage

    options = dict(
        model=model, data=data_ref, name=name, responses=str(responses) if responses else None, split=split,
        subjects=subjects or None, limit=limit, style=style, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, samples=samples, seed=seed, backend=backend, batch_size=batch_size,
        tensor_parallel_size=tensor_parallel_size, resume=resume or None, trust_remote_code=trust_remote_code or None,
        blank_images=blank_images or None,
    )
    conf = config.load(stage.Config, stage="eval", path=cfg, options=options, overrides=overrides or [])
    art, scores = stage.run(conf, store())
    if as_json:
        keys = ("overall", "disciplines", "subjects", "parse_failures", "samples")
        print(json.dumps({k: scores[k] for k in keys} | {k: v for k, v in scores.items() if "@" in k}, indent=2))
        return
    print_scores(scores)
    if art is not None:
        console.print(f"[green]published[/green] {art.ref} (eval) at {art.path}")


def print_scores(scores: dict) -> None:
    title = {
        "official": "MMMU accuracy: official rules, weighted by items",
        "reasoning": "MMMU accuracy: answer after </think> (last \\boxed{}, else a stated answer, else the official parse); "
                     "official judgments, open answers also by numeric/symbolic equivalence; weighted by items",
    }.get(scores.get("style"), "MMMU accuracy, weighted by items")
    table = Table(title=title)
    table.add_column("discipline / subject")
    table.add_column("n", justify="right")
    table.add_column("acc %", justify="right")
    from r1v3 import mmmu

    shown = set()
    for discipline, d in scores["disciplines"].items():
        table.add_row(f"[bold]{discipline}[/bold]", str(d["n"]), f"{100 * d['acc']:.1f}")
        for subject in mmmu.DISCIPLINES[discipline]:
            if subject in scores["subjects"]:
                s = scores["subjects"][subject]
                shown.add(subject)
                table.add_row(f"  {subject}", str(s["n"]), f"{100 * s['acc']:.1f}")
    for subject, s in scores["subjects"].items():
        if subject not in shown:
            table.add_row(subject or "(no subject)", str(s["n"]), f"{100 * s['acc']:.1f}")
    o = scores["overall"]
    table.add_row("[bold]Overall[/bold]", str(o["n"]), f"[bold]{100 * o['acc']:.1f}[/bold]")
    console.print(table)
    k = scores.get("samples", 1)
    pf = scores["parse_failures"]
    extra = f"  mean@{k} {100 * scores[f'mean@{k}']:.1f}  pass@{k} {100 * scores[f'pass@{k}']:.1f}" if k > 1 else ""
    console.print(f"parse failures: {pf['n']} ({100 * pf['rate']:.1f}%){extra}")


# ---- training --------------------------------------------------------------------------------


@app.command("sft")
def sft(
    model: Optional[str] = typer.Option(None, "--model", help="Model artifact to fine-tune (a vision-language model)."),
    data_ref: Optional[str] = typer.Option(None, "--data", help="Dataset artifact: rows with `messages`, or image + caption rows with --format caption."),
    name: Optional[str] = typer.Option(None, "--name", help="Artifact name for the trained model."),
    preset: Optional[str] = typer.Option(None, "--preset", help="connector-align (connector, lr 2e-4) | cold-start (connector+llm, think template) | connector-retune (connector, lr 1e-5 cosine, early stopping)."),
    trainable: Optional[str] = typer.Option(None, "--trainable", help="Parts to train: connector, vision, llm, all; join with + (default: the preset's)."),
    split: Optional[str] = typer.Option(None, "--split", help="Training split (default: train)."),
    eval_split: Optional[str] = typer.Option(None, "--eval-split", help="Validation split: its loss every eval_steps (default: none; connector-retune: validation)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="chat (rows' messages) | caption (describe-the-image from each row's caption) (default: chat)."),
    lr: Optional[float] = typer.Option(None, "--lr", "--learning-rate", help="Learning rate, the `learning_rate` key of a recipe (default: the preset's, else 2e-5)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs (default: the preset's, else 1)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps; overrides --epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per device per micro-batch (default: 8)."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step (default: 1)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Max tokens per row, image tokens included; longer rows are dropped and counted (default: 16384)."),
    save_steps: Optional[int] = typer.Option(None, "--save-steps", help="Checkpoint every N optimizer steps (default: 50)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same name from its last complete checkpoint."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute activations in the backward pass to save memory."),
    seed: Optional[int] = SeedOpt,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
    cfg: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
):
    """Supervised fine-tuning of chosen parts (TRL SFTTrainer): loss on assistant tokens, checkpoints, --resume."""
    from stages import sft as stage

    options = dict(
        model=model, data=data_ref, name=name, preset=preset, trainable=trainable, split=split, eval_split=eval_split,
        format=fmt, learning_rate=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, save_steps=save_steps, resume=resume or None,
        gradient_checkpointing=gradient_checkpointing or None, seed=seed, trust_remote_code=trust_remote_code or None,
    )
    conf = config.load(stage.Config, stage="sft", path=cfg, options=options, overrides=overrides or [])
    art = stage.run(conf, store())
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch` every process runs this; one reports
        m = art.metrics
        console.print(
            f"[green]published[/green] {art.ref} (model) at {art.path}\n"
            f"{m['steps']} steps, final loss {m['final_loss']:.4f}, {m['tokens_seen']} tokens seen, "
            f"trainable {m['parameters']['trainable']:,} of {m['parameters']['total']:,} parameters ({'+'.join(m['trainable'])})",
            highlight=False,
        )


@app.command("compose")
def compose(
    vlm: Optional[str] = typer.Option(None, "--vlm", help="Model artifact whose vision tower and connector are kept."),
    llm: Optional[str] = typer.Option(None, "--llm", help="Text-only causal LM artifact (from import-model), or smol (SmolLM2-135M-Instruct)."),
    name: Optional[str] = typer.Option(None, "--name", help="Artifact name for the composed model."),
    seed: Optional[int] = SeedOpt,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the models' own Python code."),
    cfg: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
):
    """Replace a VLM's language model with a text reasoning LLM (R1V): LLM tokenizer and chat template, VLM image tokens."""
    from stages import compose as stage

    options = {"name": name, "vlm": vlm, "llm": llm, "seed": seed, "trust_remote_code": trust_remote_code or None}
    _run(stage, "compose", cfg, options, overrides)


# ---- artifacts -------------------------------------------------------------------------------


@artifacts_app.command("ls")
def artifacts_ls(kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind: model, dataset, run, selection or eval.")):
    """List every artifact in the store."""
    from r1v3.artifacts import KINDS

    if kind is not None and kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    damaged: list[str] = []
    arts = [a for a in store().list(damaged=damaged) if kind is None or a.kind == kind]
    table = Table(title=f"store {store().root}")
    for col in ("ref", "kind", "stage", "created", "size", "inputs"):
        table.add_column(col)
    for a in arts:
        size = sum(f["size"] for f in a.manifest["files"].values())
        inputs = ", ".join(i["ref"] for i in a.manifest.get("inputs", []))
        table.add_row(a.ref, a.kind, a.manifest.get("stage", ""), a.manifest.get("created", ""), _human(size), inputs)
    console.print(table)
    for message in damaged:
        err_console.print(f"damaged: {message}", markup=False, highlight=False, soft_wrap=True)
    drafts = store().abandoned_drafts()
    if drafts:
        console.print(f"{len(drafts)} abandoned draft(s) in {store().root / '.staging'}: `r1v3 artifacts gc` removes them")


@artifacts_app.command("show")
def artifacts_show(
    ref: str = typer.Argument(..., help="Artifact reference."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
):
    """Show an artifact's manifest: kind, lineage, config, metrics, files."""
    art = store().resolve(ref)
    if as_json:
        print(json.dumps(art.manifest, indent=2))
        return
    m = art.manifest
    console.print(f"[bold]{art.ref}[/bold]  kind={art.kind}  stage={m.get('stage')}  created={m.get('created')}")
    console.print(f"path: {art.path}\ndigest: {art.digest}")
    for inp in m.get("inputs", []):
        console.print(f"input: {inp['ref']} ({inp['kind']}) {inp['digest'][:12]}")
    if m.get("config"):
        console.print("config:", m["config"])
    if m.get("metrics"):
        console.print("metrics:", m["metrics"])
    console.print(f"{len(m['files'])} files, {_human(sum(f['size'] for f in m['files'].values()))}")


@artifacts_app.command("verify")
def artifacts_verify(ref: str = typer.Argument(..., help="Artifact reference.")):
    """Check every file's sha256 against the manifest (a flipped byte is reported by file name). Exit 1 if damaged."""
    s = store()
    path = s._locate(ref)
    try:
        art = s._open(path, ref=ref)
        problems = [f"{art.ref}: {p}" for p in s.check(art, full=True)]
    except UserError as e:  # a damaged manifest is a failed verification like any damaged file
        problems = [str(e)]
    if problems:
        for p in problems:
            err_console.print(f"error: {p}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]ok[/green] {art.ref}: {len(art.manifest['files'])} files verified")


@artifacts_app.command("gc")
def artifacts_gc(
    older_than: float = typer.Option(60.0, "--older-than", help="Only drafts abandoned at least this many seconds ago."),
):
    """Remove drafts left in STORE/.staging by crashed runs (live drafts are never touched)."""
    removed = store().clean_staging(min_age=older_than)
    console.print(f"removed {len(removed)} abandoned draft(s)" + "".join(f"\n  {p}" for p in removed))


@artifacts_app.command("lineage")
def artifacts_lineage(ref: str = typer.Argument(..., help="Artifact reference.")):
    """The tree of inputs back to the imported base model and raw data."""
    s = store()
    node = s.lineage(s.resolve(ref))

    def label(n):
        text = f"{n['ref']}" + (f" [dim]{n['kind']} from {n['stage']}[/dim]" if "kind" in n else "")
        if n.get("missing"):
            text += " [red](missing from store)[/red]"
        if n.get("changed"):
            text += " [yellow](changed since use)[/yellow]"
        return text

    def add(tree, n):
        for child in n["inputs"]:
            add(tree.add(label(child)), child)

    root = Tree(label(node))
    add(root, node)
    console.print(root)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # our own progress bars say what runs; the libraries' per-shard bars and notices are noise here
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    debug = "--debug" in argv or os.environ.get("R1V3_DEBUG") == "1"
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="r1v3", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except typer.TyperException as e:  # usage errors: bad option, missing option, no command, ...
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" or not hasattr(e, "format_message"):
            e.show()  # a bare group: its help is the answer
        else:
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err_console.print(f"error: {e.format_message()}{where}", markup=False, highlight=False, soft_wrap=True)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except UserError as e:
        if debug:
            raise
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except OSError as e:
        # a path the user gave that cannot be written or read, a full disk, a read-only store:
        # one line naming the file, not a traceback (--debug shows it)
        if debug or not (e.filename or e.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise
        err_console.print(f"error: {e.filename or ''}: {e.strerror}", markup=False, highlight=False, soft_wrap=True)
        return 2 if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST) else 1


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
