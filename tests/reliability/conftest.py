"""Reliability tests (crash safety, integrity, bad inputs, security, concurrency).

Every module here is marked `reliability` (`-m reliability` runs them alone); the long kill
sweeps are also marked `slow`. Fixtures `cli` and `store` come from tests/conftest.py.
"""

import pytest

from . import harness


@pytest.fixture(scope="session")
def crash_inputs(tmp_path_factory):
    """Inputs for every writing stage, built once: see harness.prepare_inputs."""
    return harness.prepare_inputs(tmp_path_factory.mktemp("crash-inputs"))
