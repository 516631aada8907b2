#!/usr/bin/env bash
# Does the recipe teach the embedded default to see? On a 2-core CPU in about 35 minutes:
# connector-only alignment on captions (R1V), then SFT on problems, then held-out accuracy of the
# untrained, aligned and trained models by the official MMMU rules, next to chance and to the trained
# model with every image blanked (what it scores without looking).
#
# Usage: bash recipes/smol-signal.sh   (after ./setup.sh; R1V3_STORE picks the store, default: the repository's artifacts/)
#
# Scaled to a CPU, not to the paper: two tasks (colour and counting, normal level), short captions
# ("a red circle at top left, a blue square at center"), one-sentence think traces ("There are 2
# triangles: purple at top left, yellow at bottom right.") instead of long ones, and learning rates far
# above the paper's (5e-3 for a fresh 0.6M-parameter connector, 1e-4 for the LLM) because a few
# hundred steps is all there is.
set -euo pipefail
# a relative store counts from where you are, not from the repository
export R1V3_STORE=$(realpath -m "${R1V3_STORE:-$(dirname "$0")/../artifacts}")
cd "$(dirname "$0")/.."
R1V3=${R1V3:-.venv/bin/r1v3}     # split at spaces, so it may be "python -m r1v3.cli"
PYTHON=${PYTHON:-.venv/bin/python}  # prints the table at the end: checked now, not after 35 minutes
"$PYTHON" -c "import r1v3" 2>/dev/null || { echo "error: $PYTHON cannot import r1v3 (run ./setup.sh, or set PYTHON)" >&2; exit 2; }
export HF_HUB_OFFLINE=1
N=${N:-1000}                      # problems: 80% train, 10% validation (the eval), 10% test
ALIGN_STEPS=${ALIGN_STEPS:-150}   # batch 8, ~4 s a step
SFT_STEPS=${SFT_STEPS:-150}       # batch 8, ~9 s a step (the LLM trains too)
TASKS=(--tasks color,counting --difficulty normal)
TIMES="$R1V3_STORE/smol-signal-times.tsv"
mkdir -p "$R1V3_STORE"
: > "$TIMES"

timed() {  # timed LABEL command...: run it and record its wall time
    local label=$1 t0=$SECONDS
    shift
    "$@"
    printf '%s\t%s\n' "$label" "$((SECONDS - t0))" >> "$TIMES"
}
evaluate() {  # evaluate MODEL NAME [extra]: held-out validation split, think template, greedy, short budget
    local model=$1 name=$2
    shift 2
    timed "eval $name" $R1V3 eval mmmu --model "$model" --data signal-problems --split validation \
        --style reasoning --temperature 0 --max-new-tokens 48 --batch-size 16 --name "$name" "$@"
}

# 1. The smol VLM: SmolLM2-135M-Instruct + a small random vision tower + a fresh connector.
timed "init smol" $R1V3 init smol --name smol
# 2. The same problems twice: image -> short caption pairs for alignment, and conversations for SFT
#    (the eval's reasoning prompt -> a one-sentence trace grounded in the drawing, then \boxed{answer}).
timed "data synth (captions)" $R1V3 data synth --name signal-captions --n "$N" --seed 0 --messages caption "${TASKS[@]}"
timed "data synth (problems)" $R1V3 data synth --name signal-problems --n "$N" --seed 0 --messages brief "${TASKS[@]}"
evaluate smol signal-untrained
# 3. Connector-only alignment on captions: vision tower and LLM frozen.
timed "sft connector-align" $R1V3 sft --preset connector-align --model smol --data signal-captions \
    --name smol-aligned --lr 5e-3 --max-steps "$ALIGN_STEPS" --batch-size 8
evaluate smol-aligned signal-aligned
# 4. SFT on the problems: connector and LLM.
timed "sft problems" $R1V3 sft --model smol-aligned --data signal-problems --name smol-signal \
    --trainable connector+llm --lr 1e-4 --max-steps "$SFT_STEPS" --batch-size 8
evaluate smol-signal signal-trained
evaluate smol-signal signal-trained-blind --blank-images

# The accuracies next to chance, and what each stage took.
"$PYTHON" - "$R1V3_STORE" "$TIMES" <<'EOF'
import json, sys
from collections import defaultdict
from pathlib import Path

from r1v3 import data
from r1v3.artifacts import Store

store, times = Store(sys.argv[1]), [line.split("\t") for line in Path(sys.argv[2]).read_text().splitlines()]
problems = store.resolve("signal-problems", kind="dataset").path
# chance: a uniform guess among the options (multiple choice), or among the answers the task ever has (open)
open_answers = defaultdict(set)
for split in ("train", "validation", "test"):
    for r in data.read_split(problems, split):
        if r["question_type"] == "open":
            open_answers[r["subject"]].add(r["answer"])
chance = defaultdict(list)
for r in data.read_split(problems, "validation"):
    p = 1 / len(r["options"]) if r["question_type"] == "multiple-choice" else 1 / len(open_answers[r["subject"]])
    chance[r["subject"]].append(p)
    chance["overall"].append(p)
rows = [("chance", {k: sum(v) / len(v) for k, v in chance.items()}, None)]
for label, name in (("untrained smol", "signal-untrained"), ("aligned (captions, connector only)", "signal-aligned"),
                    ("aligned + SFT on problems", "signal-trained"), ("the same, images blanked", "signal-trained-blind")):
    s = json.loads(store.resolve(name, kind="eval").file("scores.json").read_text())
    rows.append((label, {"overall": s["overall"]["acc"], **{k: v["acc"] for k, v in s["subjects"].items()}},
                 s["parse_failures"]))
tasks = sorted(k for k in chance if k != "overall")
print(f"\n| model | overall (n={len(chance['overall'])}) | " + " | ".join(tasks) + " | parse failures |")
print("|---|---:|" + "---:|" * len(tasks) + "---:|")
for label, acc, failures in rows:
    cells = [f"{acc['overall'] * 100:.0f}%"] + [f"{acc[t] * 100:.0f}%" for t in tasks]
    print(f"| {label} | " + " | ".join(cells) + f" | {'' if failures is None else failures['n']} |")
print("\n| stage | wall time (s) |\n|---|---:|")
for label, seconds in times:
    print(f"| {label} | {seconds} |")
print(f"| total | {sum(int(s) for _, s in times)} |")
EOF
