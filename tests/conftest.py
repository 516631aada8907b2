import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from r1v3.artifacts import Store  # noqa: E402
from r1v3.cli import main  # noqa: E402


# An integration test runs the CLI (a stage, often on a model), a recipe, a subprocess or a server;
# `pytest -m "not integration"` is the unit loop: functions on values, in about a minute.
INTEGRATION_FIXTURES = {"cli", "ready", "teacher", "problems", "forked_r1v3"}
INTEGRATION_MODULES = {"test_recipes.py", "test_distributed.py", "test_ablations.py", "test_tracking.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in INTEGRATION_MODULES
                or "reliability" in item.path.parts):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def forked_r1v3(tmp_path_factory):
    """`R1V3` for recipe scripts: each command forked from one process that imported torch, transformers, trl and
    datasets once (tests/forkserver.py), so a script of 20 commands does not pay 20 imports. Commands run one at a
    time; a test that kills a script midway runs `python -m r1v3.cli` instead (a forked command outlives its client)."""
    from tests.forkserver import ForkServer

    server = ForkServer.start(tmp_path_factory.mktemp("forkserver") / "r1v3.sock")
    yield server.env()
    server.stop()


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


@pytest.fixture
def cli(tmp_path, capsys):
    """Run `r1v3 ...` in-process against a fresh store; returns (exit code, stdout, stderr)."""
    root = tmp_path / "store"

    def run(*args):
        code = main(["--store", str(root), *map(str, args)])
        out = capsys.readouterr()
        return code, out.out, out.err

    run.store = Store(root)
    return run


class Publisher:
    """Artifacts written straight into a store as the stages lay them out, for tests of the stages that
    read them (no stage runs): `publisher(store).dataset("d", {"train": rows})`."""

    def __init__(self, store):
        self.store = store

    def dataset(self, name, splits, stage="synth"):
        from r1v3 import data

        with self.store.publish(name, "dataset", stage=stage) as d:
            data.write_splits(d.path, splits)
        return d.artifact

    def model(self, name, seed=0, family="internvl"):
        from r1v3.models import build_tiny, save_model

        model, processor = build_tiny(family, seed=seed)
        with self.store.publish(name, "model", stage="init-model") as d:
            save_model(model, processor, d.path)
        return d.artifact

    def run(self, name, base, train, steps, families=None, config=None):
        """A run artifact as `r1v3 rl` lays it out: checkpoints/step-K/ model directories."""
        from r1v3.models import build_tiny, save_model

        families = families or ["internvl"] * len(steps)
        with self.store.publish(name, "run", stage="rl", inputs=[base, train],
                                config=config or {"split": "train", "accuracy_weight": 0.7, "format_weight": 0.3}) as d:
            for k, (step, family) in enumerate(zip(steps, families)):
                model, processor = build_tiny(family, seed=100 + k)
                save_model(model, processor, d.path / "checkpoints" / f"step-{step}")
            (d.path / "log.json").write_text("[]\n")
        return d.artifact


@pytest.fixture(scope="session")
def publisher():
    return Publisher


@pytest.fixture
def ready(cli):
    """`cli` with a tiny InternVL model `tiny` and a think-template dataset `sftdata` (train 8, validation 4)."""
    from tests.helpers import publish_dataset, think_rows

    assert cli("init", "tiny", "--name", "tiny", "--family", "internvl")[0] == 0
    publish_dataset(cli.store, "sftdata", {"train": think_rows(8), "validation": think_rows(4, seed=1, prefix="v")})
    return cli
