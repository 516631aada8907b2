"""The `r1v3` command: one thin command per stage (options -> config -> stage.run).

Mistakes a user can make print one `error: ...` line and exit 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib
import inspect
import json
import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import List, Optional

import typer
import typer.core
import typer.main
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from r1v3 import __version__, config
from r1v3.artifacts import MAX_LINEAGE_DEPTH, Store, clip, default_store, printable, shown
from r1v3.errors import UserError, error_text, plugin_failed

class _Group(typer.core.TyperGroup):
    """A command group whose stage commands are built when invoked: a stage module imports torch
    and datasets (seconds), which `r1v3 --help` or `r1v3 artifacts ls` should not pay for."""

    def resolve_command(self, ctx, args):
        if len(args) > 1 and f"{args[0]} {args[1]}" in self.commands:  # a command under a stage: `rl export`
            args = [f"{args[0]} {args[1]}", *args[2:]]
        name, cmd, rest = super().resolve_command(ctx, args)
        build = getattr(cmd, "build_stage", None)
        if build is not None:
            cmd = self.commands[name] = build()
        return name, cmd, rest


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
    cls=_Group,
)
data_app = typer.Typer(help="Make, import and inspect problem datasets.", no_args_is_help=True, cls=_Group)
artifacts_app = typer.Typer(help="List, inspect, verify and trace artifacts.", no_args_is_help=True)
init_app = typer.Typer(help="Build the embedded default models (tiny, smol, tiny-llm, smol-llm) offline.", no_args_is_help=True, cls=_Group)
app.add_typer(init_app, name="init")
app.add_typer(data_app, name="data")
app.add_typer(artifacts_app, name="artifacts")

STATE = {"store": None, "started": None, "force_kind": False}
STORE_HELP = "Artifact store directory (default: $R1V3_STORE, else ./artifacts); before or after the command."


def store() -> Store:
    given = STATE["store"]
    if given is not None and not given.strip():
        # Path("") is the current directory: an empty --store would publish there
        raise UserError("--store is empty: give a store directory (default: $R1V3_STORE, else ./artifacts)")
    return Store(given if given is not None else default_store(), started=STATE["started"],
                 force_kind=STATE["force_kind"])


def _print_version(value: bool) -> None:
    if value:
        console.print(f"r1v3 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    store_dir: Optional[str] = typer.Option(None, "--store", metavar="DIR", help=STORE_HELP),
    debug: bool = typer.Option(False, "--debug", metavar="", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", metavar="", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    STATE["store"] = store_dir


# ---- stage commands, derived from each stage's Config ------------------------------------------
# A setting's flag, help, shown default and range live in its Config field (r1v3/config.py
# `setting`); a command adds only what is not a setting (--config, overrides, --json).


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _metavar(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return "|".join(map(str, typing.get_args(tp)))
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return _metavar(args[0])
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(tp, "VALUE")


def _parameter(cls, f, tp) -> inspect.Parameter:
    """The typer parameter of a Config field. Values stay text (lists: repeated or comma-separated)
    so the config layer parses them like YAML and override values, with the same one-line errors."""
    m = config.meta(f)
    flag = config.flag_of(f)
    default = config.default_of(cls, f)
    shown = m.get("shown") or (None if default is config.REQUIRED or callable(default) or default is None
                               or isinstance(default, bool) else _shown(default))
    base = {a for a in typing.get_args(tp) if a is not type(None)} or {tp}
    if m.get("argument"):
        many = typing.get_origin(tp) is list  # `compare A B C`
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=List[str] if many else str,
                                 default=typer.Argument(..., help=m["help"], show_default=False,
                                                        metavar=m.get("metavar")))
    text = m["help"] + (f" (default: {shown})" if shown else "")
    common = dict(help=text.replace("[", "\\["), rich_help_panel=m.get("panel"), show_default=False)
    if base == {bool}:  # a flag takes no value; `key=false` undoes a recipe's `key: true`
        info = typer.Option(None, flag, *m["aliases"], metavar="", **common)
        annotation = Optional[bool]
    elif typing.get_origin(tp) is list:
        info = typer.Option(None, flag, *m["aliases"], metavar="A,B,..", **common)
        annotation = Optional[List[str]]
    else:
        info = typer.Option(None, flag, *m["aliases"], metavar=m.get("metavar") or _metavar(tp), **common)
        annotation = Optional[str]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=info)


def _override_example(cls, fields) -> str:
    """Two of the command's own settings with their defaults, as an override would set them."""
    number = lambda f: type(config.default_of(cls, f)) in (int, float)  # noqa: E731
    picks = [f for f in fields if number(f) and f.name != "seed"][:1]
    picks += [f for f in fields if f.name == "seed"] or [f for f in fields if f not in picks and number(f)][:1]
    example = " ".join(f"{f.name}={_shown(config.default_of(cls, f))}" for f in picks) or "key=value"
    return example + (" trl.epsilon_high=0.28" if any(f.name == "trl" for f in fields) else "")


STAGES: list[tuple[str, str, str, dict]] = []  # (group, command, stage module, stage_command options)


def stage_command(group: str, name: str, module: str, **options) -> None:
    """`r1v3 [GROUP] NAME` runs the stage module `module`; see _stage_command for `options`."""
    STAGES.append((group, name, module, options))


def _build_stage(name: str, module_name: str, options: dict):
    sub = typer.Typer(add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False)
    _stage_command(sub, name, importlib.import_module(module_name), **options)
    return typer.main.get_command(sub)  # one command and no callback: the command itself


def _stage_command(group: typer.Typer, name: str, module, *, doc: str, fixed: dict | None = None,
                   hide: tuple[str, ...] = (), extra: tuple[inspect.Parameter, ...] = (),
                   config_class: str = "Config", publishes: dict[str, str] | None = None) -> None:
    """Register `name` on `group`: its options are the fields of the module's `config_class` (less
    `fixed` and `hide`), plus --config, key=value overrides and `extra`; the module's
    `report(result, console, **extra)` prints the result. `publishes` maps the settings naming what it publishes to their kinds
    ({"name": "model"}): a name holding another kind is refused before the stage runs, unless --force-kind."""
    cls = getattr(module, config_class)
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in (fixed or {}) and f.name not in hide]
    # a mapping (rl's and sft's `trl`) is set by dotted overrides, trl.KEY=VALUE, not by one flag
    flagged = [f for f in fields if typing.get_origin(hints[f.name]) is not dict]
    params = [_parameter(cls, f, hints[f.name]) for f in flagged]
    flags = {f.name: config.flag_of(f) for f in flagged}
    params.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                    default=typer.Option(None, "--config", "-c", metavar="YAML", help=(
                                        f"Recipe YAML: its `{cls.STAGE}:` section, or the whole file."))))
    # a list argument (`compare A B C`) takes every word: KEY=VALUE words among them are the overrides
    variadic = next((f.name for f in flagged if config.meta(f).get("argument")
                     and typing.get_origin(hints[f.name]) is list), None)
    if variadic is None:
        params.append(inspect.Parameter("overrides", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[List[str]],
                                        default=typer.Argument(None, metavar="KEY=VALUE", show_default=False, help=(
                                            "Dotted key=value overrides of any setting (the keys of --config), "
                                            f"e.g. {_override_example(cls, fields)}."))))
    params.append(inspect.Parameter("reuse", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[bool],
                                    default=typer.Option(None, "--reuse/--no-reuse", metavar="", help=(
                                        "Skip the stage when the latest artifact of --name came from the same "
                                        "settings and inputs (default: on when R1V3_REUSE=1)."))))
    if publishes:
        params.append(inspect.Parameter("force_kind", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                        default=typer.Option(False, "--force-kind", help=(
                                            "Publish even when the name already holds artifacts of another kind "
                                            "(the new version then shadows them for references by name)."))))
    params.extend(extra)
    params.append(inspect.Parameter("store_after", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                    default=STORE_AFTER))
    extra_names = {p.name for p in extra}

    def command(**kw):
        STATE["started"] = time.monotonic()  # what the artifact records as its wall time
        path, overrides, reuse = kw.pop("config_file"), kw.pop("overrides", None) or [], kw.pop("reuse")
        STATE["force_kind"] = kw.pop("force_kind", False)
        if variadic is not None:
            words = kw.pop(variadic) or []
            overrides = [w for w in words if "=" in w]
            kw[variadic] = [w for w in words if "=" not in w]
        extras = {k: kw.pop(k) for k in extra_names}
        options = {k: ",".join(v) if isinstance(v, list) else v for k, v in kw.items()}
        conf = config.load(cls, stage=cls.STAGE, path=path, options={**options, **(fixed or {})},
                           overrides=overrides, flags=flags)
        for note in conf.notes:
            err_console.print(f"note: {printable(note)}", markup=False, highlight=False, soft_wrap=True)
        current = None
        if reuse if reuse is not None else os.environ.get("R1V3_REUSE") == "1":
            for setting_, spec in config.undigested(conf):
                err_console.print(f"note: --reuse cannot tell whether {printable(spec)} ({setting_}) changed; "
                                  "running the stage", markup=False, highlight=False, soft_wrap=True)
            current = store().up_to_date(conf)
        if current:
            for art in current:
                console.print(f"up to date: {art.ref} (reused)", markup=False, highlight=False)
            return
        for key, kind in (publishes or {}).items():  # before any work, not after hours of training
            if getattr(conf, key, None):
                store().check_kind(getattr(conf, key), kind)
        try:
            result = module.run(conf, store())
        except Exception:
            raise
        except BaseException as e:
            if not plugin_failed(e):
                raise
            # not ours (we raise typer.Exit): code the stage ran, a model's own code with
            # --trust-remote-code or a library, tried to end the process. What the run saved stays.
            raise UserError(f"{name}: the run was ended by {error_text(e)} from code it ran (the model's own code, "
                            "a plug-in or a library); nothing was published") from e
        module.report(result, console, **extras)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = name.replace("-", "_")
    group.command(name, help=doc)(command)


def _remember_store(value: Optional[str]) -> None:
    if value is not None:
        STATE["store"] = value


# --store after the command too (`r1v3 sft ... --store S`); it wins over one before it
STORE_AFTER = typer.Option(None, "--store", metavar="DIR", help=STORE_HELP, callback=_remember_store, expose_value=False)


def build_cli():
    """The click command of `r1v3`: the typer app and its stage commands (built when invoked)."""
    command = typer.main.get_command(app)
    groups = {"": command, **{n: c for n, c in command.commands.items() if isinstance(c, typer.core.TyperGroup)}}
    for group, name, module, options in STAGES:
        placeholder = typer.core.TyperCommand(name=name, help=options["doc"])
        placeholder.build_stage = functools.partial(_build_stage, name, module, options)
        groups[group].add_command(placeholder, name)
    return command


# ---- models ----------------------------------------------------------------------------------

stage_command("init", "tiny", "stages.init_model", publishes={"name": "model"}, fixed={"model": "tiny"},
              doc="A random-weight model of a supported family with an offline tokenizer (about a second).")
stage_command("init", "smol", "stages.init_model", publishes={"name": "model"}, fixed={"model": "smol"}, hide=("family",),
              doc="A real small VLM: SmolLM2-135M-Instruct + a small vision tower + a fresh connector (InternVL family).")
stage_command("init", "tiny-llm", "stages.init_model", publishes={"name": "model"}, fixed={"model": "tiny-llm"}, hide=("family",),
              doc="A random-weight text-only LLM (Qwen2, the tiny ChatML tokenizer): to compose with, or a distill teacher.")
stage_command("init", "smol-llm", "stages.init_model", publishes={"name": "model"}, fixed={"model": "smol-llm"}, hide=("family", "seed"),
              doc="SmolLM2-135M-Instruct alone, a text-only LLM: a distill teacher, trainable by sft --format text-rendering.")
stage_command("", "import-model", "stages.import_model", publishes={"name": "model"},
              doc="Wrap a local Hugging Face model directory (a VLM or a text LLM) as a model artifact.")


# ---- data ------------------------------------------------------------------------------------

stage_command("data", "synth", "stages.synth", publishes={"name": "dataset"},
              doc="Synthetic visual reasoning problems drawn with Pillow (counting, colour, position, arithmetic, charts).")
stage_command("data", "import", "stages.data_import", publishes={"name": "dataset"},
              doc="Import your own problem rows (validated, images embedded) as a dataset artifact.")


@data_app.command("show")
def data_show(
    ref: str = typer.Argument(..., help="Dataset artifact reference."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to show (default: the first)."),
    limit: int = typer.Option(5, "--limit", "--n", help="Rows to print (as eval mmmu --limit; --n is the older spelling)."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Save a contact sheet PNG of the images here."),
    store_after: Optional[str] = STORE_AFTER,
):
    """Print a few rows of a dataset and optionally save a contact sheet of its images."""
    from r1v3 import data

    if limit < 0:
        raise UserError(f"--limit must be 0 or more, got {limit}")
    art = store().resolve(ref, kind="dataset")
    splits = data.list_splits(art.path)
    split = split or ("train" if "train" in splits else splits[0])
    if split not in splits:
        raise UserError(f"{ref}: no split {split!r} (has {', '.join(splits)})")
    rows = data.read_split(art.path, split)
    console.print(Text.assemble(shown(art.ref, style="bold"), " ", shown(f"[{split}]"),
                                f" {len(rows)} rows (splits: ", shown(", ".join(splits), 400), ")"))
    for row in rows[:limit]:  # every field is the dataset's text: shown, never read as markup
        options = "  ".join(f"({data.LETTERS[i]}) {o}" for i, o in enumerate(row["options"]))
        caption = row.get("caption") or ""
        lines = [Text.assemble(shown(row["id"], style="cyan"), " ",
                               shown(f"{row['subject']} {row['question_type']} {row.get('difficulty') or ''}", 200),
                               f" images={len(row['images'])}"),
                 Text.assemble("  Q: ", shown(row["question"], 2000))]
        if options:
            lines.append(Text.assemble("  ", shown(options, 2000)))
        lines.append(Text.assemble("  answer: ", shown(row["answer"], 200, style="green")))
        if caption:
            lines.append(Text.assemble("  caption: ", shown(caption, 163, style="dim")))
        console.print(Text("\n").join(lines), highlight=False)
    if sheet is not None:
        data.contact_sheet(rows, sheet, n=max(limit, 16))
        console.print(f"contact sheet: {sheet}")


stage_command("data", "mmmu", "stages.mmmu_import", publishes={"name": "dataset"},
              doc="Import MMMU (all images in order, <image N> placeholders mapped) as a dataset artifact.")
stage_command("data", "mathvista", "stages.mathvista_import", publishes={"name": "dataset"},
              doc="Import MathVista testmini (its answer types, precisions and metadata kept for the official scorer).")


eval_app = typer.Typer(help="Evaluate models on benchmarks.", no_args_is_help=True, cls=_Group)
app.add_typer(eval_app, name="eval")


_EVAL_JSON = (inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
    False, "--json", help="Print the scores as JSON on stdout.")),)
stage_command("eval", "mmmu", "stages.evaluate", publishes={"name": "eval"}, extra=_EVAL_JSON,
              doc="MMMU accuracy by the official rules: per subject, per discipline, overall (weighted by items).")
stage_command("eval", "mathvista", "stages.evaluate", config_class="MathVistaConfig", publishes={"name": "eval"},
              extra=_EVAL_JSON, doc=(
                  "MathVista accuracy by the official calculate_score.py: overall and per question type, answer type, "
                  "language, source, category, task, context, grade and skill."))


# ---- training --------------------------------------------------------------------------------


stage_command("", "sft", "stages.sft", publishes={"name": "model"}, doc=(
    "Supervised fine-tuning of chosen parts (TRL SFTTrainer): loss on assistant tokens, checkpoints, --resume."))
stage_command("", "compose", "stages.compose", publishes={"name": "model"}, doc=(
    "Replace a VLM's language model with a text reasoning LLM (R1V): LLM tokenizer and chat template, VLM image tokens."))


stage_command("", "distill", "stages.distill", publishes={"name": "dataset"}, doc=(
    "Cold-start traces from a text-only teacher reading each image's caption: rejection-sampled, verified "
    "with the eval's answer rules, filtered, published as a think-template dataset for `sft --preset cold-start`."))


stage_command("", "select-ckpt", "stages.select_ckpt", publishes={"name": "selection", "model_name": "model"}, doc=(
    "Choose an RL checkpoint by the entropy of its critical reasoning tokens (Wait, Alternatively, Hmm) on a held-out "
    "probe split, with guards on accuracy and format; publishes the figures, the probe records and the chosen model."))


stage_command("", "rl", "stages.rl", publishes={"name": "run"}, doc=(
    "Curriculum-ordered GRPO on a VLM (TRL GRPOTrainer): paper defaults, accuracy/format/custom rewards, "
    "checkpoints with metrics in a run artifact, --resume. `r1v3 rl export RUN` publishes a checkpoint as a model."))
stage_command("", "rl export", "stages.rl_export", publishes={"name": "model"}, doc=(
    "Publish a checkpoint of an `r1v3 rl` run (default: the final one) as a model artifact whose lineage names the run."))
stage_command("", "difficulty", "stages.difficulty", publishes={"name": "dataset"}, doc=(
    "Measure each problem's pass rate with k samples from a model; publish the dataset with pass_rate "
    "(for --drop-solved/--drop-unsolved and the pass-rate curriculum)."))


stage_command("", "compare", "stages.compare", extra=(
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--json", help="Print the figures as JSON on stdout.")),
), doc=("Did it help, by how much, could it be noise: evals against the first on the same items, with paired "
        "bootstrap intervals and McNemar p, overall and by subject and difficulty."))


stage_command("", "report", "stages.report", doc=(
    "Write a self-contained HTML page about an artifact: its lineage graph, each stage's settings, metrics and "
    "plots, and the scores of every eval of its models. Opens offline; no script, no external reference."))


# ---- artifacts -------------------------------------------------------------------------------


@artifacts_app.command("ls")
def artifacts_ls(kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind: model, dataset, run, selection or eval."),
                 store_after: Optional[str] = STORE_AFTER):
    """List every artifact in the store."""
    from r1v3.artifacts import KINDS

    if kind is not None and kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    damaged: list[str] = []
    everything = store().list(damaged=damaged)
    arts = [a for a in everything if kind is None or a.kind == kind]
    table = Table(title=escape(f"store {store().root}"))
    for col in ("ref", "kind", "stage", "created", "size", "inputs"):
        table.add_column(col)
    kinds: dict[str, set] = {}
    for a in everything:  # a name's kinds over all its versions, whatever --kind shows
        kinds.setdefault(a.name, set()).add(a.kind)
    mixed = sorted(n for n, k in kinds.items() if len(k) > 1)
    for a in arts:
        m = a.manifest  # its types were checked when it was opened; its text is anyone's
        size = sum(f["size"] for f in m["files"].values())
        refs = [i["ref"] for i in m.get("inputs", [])]
        inputs = ", ".join(refs[:4]) + (f" (+{len(refs) - 4} more)" if len(refs) > 4 else "")
        table.add_row(a.ref, a.kind + (" *" if a.name in mixed else ""), escape(clip(m.get("stage", ""), 24)),
                      escape(clip(m.get("created", ""), 24)), _human(size), inputs)
    console.print(table)
    for n in mixed:
        console.print(f"* {n} holds more than one kind ({', '.join(sorted(kinds[n]))}): a reference by name takes its "
                      f"latest version; name a version ({n}@vN) to pick another", markup=False, highlight=False)
    for message in damaged:
        err_console.print(f"damaged: {message}", markup=False, highlight=False, soft_wrap=True)
    drafts = store().abandoned_drafts()
    if drafts:
        console.print(f"{len(drafts)} abandoned draft(s) in {store().root / '.staging'}: `r1v3 artifacts gc` removes them")


@artifacts_app.command("show")
def artifacts_show(
    ref: str = typer.Argument(..., help="Artifact reference."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
    store_after: Optional[str] = STORE_AFTER,
):
    """Show an artifact's manifest: kind, lineage, config, metrics, files."""
    art = store().resolve(ref)
    if as_json:
        print(json.dumps(art.manifest, indent=2))
        return
    m = art.manifest  # its types were checked when it was opened; its text is anyone's
    say = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    took = f"  took={m['seconds']:.0f}s" if "seconds" in m else ""
    say(f"{art.ref}  kind={art.kind}  stage={clip(m.get('stage'), 40)}  created={clip(m.get('created'), 40)}{took}")
    say(f"path: {art.path}\ndigest: {art.digest}")
    for inp in m.get("inputs", [])[:SHOW_LIMIT]:
        say(f"input: {inp['ref']} ({inp['kind']}) {inp['digest'][:12]}")
    if len(m.get("inputs", [])) > SHOW_LIMIT:
        say(f"... and {len(m['inputs']) - SHOW_LIMIT} more inputs")
    for key in ("config", "metrics"):
        if m.get(key):  # one line each, cut: `show --json` prints them whole
            say(f"{key}: {clip(json.dumps(m[key], sort_keys=True), 2000)}")
    say(f"{len(m['files'])} files, {_human(sum(f['size'] for f in m['files'].values()))}")


@artifacts_app.command("verify")
def artifacts_verify(ref: str = typer.Argument(..., help="Artifact reference."), store_after: Optional[str] = STORE_AFTER):
    """Check every file's sha256 against the manifest (a flipped byte is reported by file name). Exit 1 if damaged."""
    art, problems = store().verify(ref)  # a damaged manifest fails like any damaged file
    if problems:
        for p in problems:
            err_console.print(f"error: {p}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]ok[/green] {art.ref}: {len(art.manifest['files'])} files verified")


@artifacts_app.command("gc")
def artifacts_gc(
    older_than: float = typer.Option(60.0, "--older-than", help="Only drafts abandoned at least this many seconds ago."),
    store_after: Optional[str] = STORE_AFTER,
):
    """Remove drafts left in STORE/.staging by crashed runs (live drafts are never touched)."""
    removed = store().clean_staging(min_age=older_than)
    console.print(f"removed {len(removed)} abandoned draft(s)" + "".join(f"\n  {p}" for p in removed))


@artifacts_app.command("lineage")
def artifacts_lineage(ref: str = typer.Argument(..., help="Artifact reference."), store_after: Optional[str] = STORE_AFTER):
    """The tree of inputs back to the imported base model and raw data."""
    s = store()
    node = s.lineage(s.resolve(ref))

    def label(n):
        text = f"{n['ref']}" + (f" [dim]{n['kind']} from {escape(clip(n['stage'], 40))}[/dim]" if "kind" in n else "")
        if n.get("missing"):
            text += " [red](missing from store)[/red]"
        if n.get("damaged"):
            text += f" [red](damaged: {escape(n['damaged'])})[/red]"
        if n.get("cycle"):
            text += " [red](cycle: cites an artifact that depends on it)[/red]"
        if n.get("repeated"):
            text += " [dim](inputs shown above)[/dim]"
        if n.get("truncated"):
            text += f" [dim](deeper than {MAX_LINEAGE_DEPTH} levels, not followed)[/dim]"
        if n.get("changed"):
            text += " [yellow](changed since use)[/yellow]"
        return text

    def add(tree, n):
        for child in n["inputs"]:
            add(tree.add(label(child)), child)

    root = Tree(label(node))
    add(root, node)
    console.print(root)


SHOW_LIMIT = 50  # inputs listed by `artifacts show`


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# A path that cannot be used as given: missing, of the wrong type, or not ours to read or write
# (a read-only or foreign store). The user fixes these by choosing another path or its permissions.
USER_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
               errno.ENAMETOOLONG, errno.ELOOP)


def _say_error(text: str) -> None:
    """The one `error:` line: no form of an API key (only a run that made an HTTP backend has one
    to hide), and no terminal control characters from the text a user or a file put in it."""
    generation = sys.modules.get("r1v3.generation")
    if generation is not None:
        text = generation.scrub_secrets(text)
    err_console.print(f"error: {printable(text)}", markup=False, highlight=False, soft_wrap=True)


def quiet_libraries() -> None:
    """Our own progress bars say what runs; the libraries' per-shard bars and notices are noise here.
    Set before transformers, huggingface_hub and tqdm are imported: they read these once, then."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not (sys.stdout.isatty() and sys.stderr.isatty()):  # a log file: bars would flood it (GGUF conversion)
        os.environ.setdefault("TQDM_DISABLE", "1")


def main(argv: list[str] | None = None) -> int:
    """Run `r1v3 ARGV`; returns the exit code.

    0: done. 2: the user's mistake, as one `error:` line: bad options, config or input, an
    artifact that is missing or damaged when a command needs it, and a path that cannot be read
    or written as given, a read-only store included, wherever the write happens (a draft, a work
    directory, a lock). 1: `artifacts verify` found damage, or the machine failed under a correct
    request (disk full, quota, I/O error), as one line when the OS names the file. 3: the stage ran
    but kept nothing to publish (distill: no trace verified). 130: interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    debug = "--debug" in argv or os.environ.get("R1V3_DEBUG") == "1"
    command = build_cli()
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
            _say_error(f"{e.format_message()}{where}")
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except UserError as e:
        if debug:
            raise
        _say_error(str(e))
        return getattr(e, "exit_code", 2)
    except OSError as e:
        # classified here, by errno, whichever stage or store method raised it: one rule for
        # every command (see the docstring); one line naming the file, --debug shows the traceback
        if debug or not (e.filename or e.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise
        where = f"{e.filename}: " if e.filename else ""
        _say_error(f"{where}{e.strerror or e}")
        return 2 if e.errno in USER_ERRNOS else 1


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
