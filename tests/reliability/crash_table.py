"""Print the crash-safety table: every writing stage x kill point, survived or not.

    python -m tests.reliability.crash_table          # the whole sweep (~7 minutes on 2 cores)
    python -m tests.reliability.crash_table --ci     # only the points CI runs
    python -m tests.reliability.crash_table --stage rl --stage distill   # only these rows

"Survived" means: the process died by SIGKILL at that point; nothing incomplete was visible in
the store; every visible artifact passed `r1v3 artifacts verify`; the dead writer's draft was
recognised as abandoned; and a re-run (with --resume where the stage has it) published files
identical (sha256) to an uninterrupted run's (for sft's and rl's log_history.json: every per-step
entry; see harness._without_wall_clock). For sft and rl the re-run must resume from the checkpoint
the kill point implies (sft: and that checkpoint must hold every file a resume reads); for distill,
difficulty and select-ckpt it must redo exactly what the kill left undone (teacher outputs, rows,
checkpoints).
"""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from .harness import STAGES, points, prepare_inputs, run_scenario  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="only the kill points CI runs")
    parser.add_argument("--stage", action="append", choices=list(STAGES), help="only this stage's rows (repeatable)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="r1v3-crash-"))
    start = time.perf_counter()
    try:
        inputs = prepare_inputs(base / "inputs")
        rows, failed = [], 0
        for stage, point in points(ci_only=args.ci):
            if args.stage and stage not in args.stage:
                continue
            try:
                d = run_scenario(stage, point, inputs, base)
                notes = [f"{d['leftover_drafts']} abandoned draft(s), cleaned"] if d["leftover_drafts"] else []
                if d.get("items_resumed") is not None:
                    notes.append(f"{d['items_resumed']} items resumed")
                if "resumed_from_step" in d:
                    step = d["resumed_from_step"]
                    notes.append(f"resumed from checkpoint-{step}" if step else "re-run started from step 0")
                notes += d["notes"]
                rows.append((stage, point, "survived", "; ".join(notes)))
            except AssertionError as e:
                failed += 1
                rows.append((stage, point, "**FAILED**", str(e).splitlines()[0][:160]))
            print(f"{stage} / {point}: {rows[-1][2]}", file=sys.stderr)
        print("| stage | kill point | result | notes |")
        print("|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print(f"\n{len(rows) - failed}/{len(rows)} survived in {time.perf_counter() - start:.0f} s")
        return 1 if failed else 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
