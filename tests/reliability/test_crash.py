"""SIGKILL every writing stage at several points; nothing half-written is visible, what is
visible verifies, and a re-run (--resume where the stage has it) gives the uninterrupted run's files.

The CI subset covers each stage at its riskiest point (rl, three GRPO runs a point, only in the
sweep); the whole sweep is `-m slow` (`python -m tests.reliability.crash_table` prints it as a table).
"""

import pytest

from . import harness

pytestmark = pytest.mark.reliability

CI = set(harness.points(ci_only=True))
SCENARIOS = [
    pytest.param(stage, point, id=f"{stage}: {point}", marks=() if (stage, point) in CI else pytest.mark.slow)
    for stage, point in harness.points()
]


@pytest.mark.parametrize("stage,point", SCENARIOS)
def test_kill_then_rerun_equals_uninterrupted(stage, point, crash_inputs, tmp_path_factory):
    details = harness.run_scenario(stage, point, crash_inputs, tmp_path_factory.mktemp("crash"))
    print(f"\n{stage} | {point} | survived | {details}")


@pytest.mark.slow
def test_sft_resume_after_an_early_stop_trains_nothing_more(crash_inputs, tmp_path_factory):
    # killed while publishing a run that stopped early: transformers 5.23 resumed into more steps
    (point, *_), = harness.OTHER_STAGES["sft early stop"].points
    details = harness.run_scenario("sft early stop", point, crash_inputs, tmp_path_factory.mktemp("crash"))
    assert details["resumed_from_step"] == 18
