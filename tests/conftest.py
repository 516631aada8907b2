import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from r1v3.artifacts import Store  # noqa: E402
from r1v3.cli import main  # noqa: E402


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
