"""Fixtures of the command-line tests: one micro training run, shared by every file in tests/cli."""

from __future__ import annotations

import pytest

from boltzformer.cli import main
from cli_helpers import MICRO


@pytest.fixture(scope="session", autouse=True)
def _lightning_logs_to_the_session_stderr():
    """Import Lightning before any test of this folder runs. Its import adds a ``StreamHandler`` bound to the
    ``sys.stderr`` of that moment; imported inside a test that uses ``capsys`` (``train`` imports it before
    checking --data), the handler keeps that test's stream, closed afterwards, and every later training logs a
    "Logging error" to stderr, which the one-line error checks then count."""
    import lightning.pytorch  # noqa: F401


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A 2-step synthetic run (last.ckpt, config.json, logs/); tests read it or copy it, never change it."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", "synthetic", "--out", str(out), *MICRO]) == 0
    return out
