"""The prepared GPU check runs on the CPU (``--dry-run``): its correctness checks pass at tiny sizes
and it writes its JSON. The correctness section here (the speed sections take longer; the whole dry run is
run by hand, see docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_passes_its_checks(tmp_path):
    pytest.importorskip("triton", reason="the dry run checks the Triton kernels in Triton's interpreter")
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--sections", "tests",
                          "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    tests = result["sections"]["tests"]["rows"]
    assert {r["check"] for r in tests} >= {"stream equals the CPU's", "sampled == dense (values, gradients)",
                                            "Triton (interpreter) == PyTorch", "same seed, same sets and logits"}
    assert all(r["ok"] for r in tests), [r for r in tests if not r["ok"]]
    assert "## tests" in run.stdout and "| check | ok |" in run.stdout  # the printed table
