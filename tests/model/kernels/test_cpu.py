"""The CPU kernels' build and boundary: a failed build warns once and falls back to PyTorch with the
same draws; bad arguments raise TypeError/ValueError naming the argument, also under ``python -O``.
(Their arithmetic against PyTorch's operations: tests/model/test_attention.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from boltzformer.model.kernels import cpu as cpu_kernels
from boltzformer.model.kernels import cpu_build
from boltzformer.model.sampling import boltzmann_keep_mask, sample_token_indices

SRC = Path(cpu_build.__file__).resolve().parents[3]


def _draws(logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    idx, valid = sample_token_indices(logits, 0.25, 0.1, generator=g, sets=3)
    return idx, valid, boltzmann_keep_mask(logits, 0.5, 0.1, generator=g)


def test_the_c_sources_are_files_beside_the_module():
    assert [path.name for path in cpu_build.SOURCES] == ["sampled_attention.c", "draws.c"]
    assert all(path.is_file() for path in cpu_build.SOURCES)


def test_a_failed_build_warns_once_and_draws_the_same_sets_with_pytorch(monkeypatch, tmp_path):
    """No compiler (CC names a missing one): one RuntimeWarning naming the reason, then PyTorch's
    operations, which draw the very sets the C kernels draw (or the PyTorch path draws, when this
    machine cannot build them either)."""
    logits = torch.randn(2, 4, 300, generator=torch.Generator().manual_seed(0)) * 4
    if cpu_kernels.available(torch.zeros(1)):
        expected = _draws(logits)
    else:
        monkeypatch.setenv("BOLTZFORMER_CPU_KERNELS", "0")
        expected = _draws(logits)
        monkeypatch.delenv("BOLTZFORMER_CPU_KERNELS")
    monkeypatch.setenv("BOLTZFORMER_CPU_KERNELS", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_build, "_loaded", [])  # forget this process's library: build again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _draws(logits)
        second = _draws(logits)
        assert not cpu_kernels.available(torch.zeros(1))
    ours = [w for w in caught if "C kernels" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert "no-such-cc" in str(ours[0].message) and "was not found" in str(ours[0].message)
    assert "no-such-cc" in cpu_build.failure()
    for a, b, c in zip(expected, first, second):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(RuntimeError, match="not available .*no-such-cc"):
        cpu_kernels.exponentials(1, 4)


def test_a_compile_error_is_the_reason_given(monkeypatch, tmp_path):
    """A compiler that fails: the warning quotes its first line of output."""
    cc = tmp_path / "bad-cc"
    cc.write_text("#!/bin/sh\necho 'error: this compiler refuses' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_build, "_loaded", [])
    with pytest.warns(RuntimeWarning, match="bad-cc failed on the kernels' sources: error: this compiler refuses"):
        assert cpu_build.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_build.library() is None  # no second warning


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: cpu_kernels.weighted_draws(torch.rand(3, 10, dtype=torch.float64), sets=1, n=2), TypeError,
         "weights must be torch.float32, got torch.float64"),
        (lambda: cpu_kernels.weighted_draws(torch.rand(3, 10)[:, ::2], sets=1, n=2), ValueError, "weights: .*contiguous"),
        (lambda: cpu_kernels.weighted_draws(torch.rand(30), sets=1, n=2), ValueError, r"weights must have shape \(\*, \*\)"),
        (lambda: cpu_kernels.weighted_draws(torch.rand(3, 10), torch.rand(2, 1, 3, dtype=torch.float64)), ValueError,
         r"exponentials must have shape \(3, \*, \*\)"),
        (lambda: cpu_kernels.weighted_draws(torch.rand(3, 10), sets=1, n=2.0), TypeError, "n must be an int"),
        (lambda: cpu_kernels.exponentials(1, -1), ValueError, "count must be >= 0, got -1"),
        (lambda: cpu_kernels.plan(torch.zeros(2, 3, dtype=torch.int32), torch.ones(2, 3, dtype=torch.bool), 10, 4),
         TypeError, "draws must be torch.int64"),
        (lambda: cpu_kernels.plan(torch.zeros(2, 3, dtype=torch.int64), torch.ones(2, 4, dtype=torch.bool), 10, 4),
         ValueError, r"valid must have shape \(2, 3\)"),
        (lambda: cpu_kernels.plan(torch.zeros(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.bool), 0, 4),
         ValueError, "num_rows must be >= 1"),
        (lambda: cpu_kernels.plan_sddmm(torch.zeros(2, 4), torch.zeros(10, 4), "plan"), TypeError, "p must be a Plan"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_plan_shapes_are_checked_against_the_plan():
    """X with fewer rows than the plan was made for would be read past its end: refused."""
    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built")
    draws = torch.tensor([[0, 3, 9], [1, 2, 5]])
    p = cpu_kernels.plan(draws, torch.ones(2, 3, dtype=torch.bool), 10, 4)
    with pytest.raises(ValueError, match=r"X must have shape \(10, \*\), got \(9, 4\)"):
        cpu_kernels.plan_sddmm(torch.zeros(2, 4), torch.zeros(9, 4), p)
    with pytest.raises(ValueError, match=r"A must have shape \(2, 4\), got \(3, 4\)"):
        cpu_kernels.plan_sddmm(torch.zeros(3, 4), torch.zeros(10, 4), p)
    with pytest.raises(ValueError, match=r"W must have shape \(6,\), got \(5,\)"):
        cpu_kernels.plan_spmm(torch.zeros(5), torch.zeros(10, 4), p)
    with pytest.raises(ValueError, match=r"row_max must have shape \(2,\)"):
        cpu_kernels.plan_softmax(torch.zeros(6), p, row_max=torch.zeros(3))


def test_checks_hold_under_python_dash_o():
    """The checks are not asserts: ``python -O`` (which drops asserts) still raises."""
    code = (
        "import torch\n"
        "from boltzformer.model.kernels import cpu\n"
        "try:\n"
        "    cpu.weighted_draws(torch.rand(3, 10, dtype=torch.float64), sets=1, n=2)\n"
        "except TypeError as e:\n"
        "    print('raised:', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "raised: weights must be torch.float32, got torch.float64" in out.stdout
