"""Fixtures of the command-line tests: one micro training run, shared by every file in tests/cli."""

from __future__ import annotations

import logging
import sys

import pytest

from boltzformer.cli import main
from tests.cli.cli_helpers import MICRO


@pytest.fixture(scope="session", autouse=True)
def _lightning_logs_to_the_session_stderr():
    """Lightning's import adds a ``StreamHandler`` bound to the ``sys.stderr`` of that moment. Imported inside
    a test that uses ``capsys`` (``train`` imports it before checking --data; so does ``boltzformer import``
    then ``train`` in tests/data), the handler keeps that test's stream, closed afterwards, and every later
    training prints a "Logging error" to stderr, which the one-line error checks here count. Import it now,
    outside any test, or point a handler left with a closed stream at the session's stderr."""
    import lightning.pytorch  # noqa: F401

    for logger in [*logging.root.manager.loggerDict.values(), logging.root]:
        for handler in getattr(logger, "handlers", []):  # placeholders have none
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed stream first


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A 2-step synthetic run (last.ckpt, config.json, logs/); tests read it or copy it, never change it."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", "synthetic", "--out", str(out), *MICRO]) == 0
    return out
