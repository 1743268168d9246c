"""A quick subset of benchmarks/reliability.py (the script behind docs/reliability.md), in this process."""

from __future__ import annotations

import json

import pytest
import torch

import boltzformer
from tests.benchmarks import load_benchmark

SUBSET = ["predict_ok", "predict_16bit_ct_prompt", "predict_nan_tiff", "predict_1x1", "predict_window_unknown",
          "predict_out_under_file", "predict_folder_to_png", "predict_two_dicom_series", "predict_dicom_series_uid",
          "predict_checkpoint_text",
          "predict_folder_rerun_threshold", "predict_non_utf8_name", "evaluate_out_is_folder", "import_out_is_file"]


@pytest.fixture(scope="module")
def reliability():
    return load_benchmark('reliability')


def test_the_table_has_at_least_40_kinds_of_input(reliability):
    names = [c.name for c in reliability.CASES]
    assert len(set(names)) == len(names) >= 40
    assert set(SUBSET) <= set(names)


@pytest.mark.slow
def test_a_subset_of_the_reliability_cases_gives_the_expected_exit_codes(reliability, tmp_path):
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", image_size=64, num_layers=2, num_queries=4)
    checkpoint = boltzformer.save_checkpoint(model, tmp_path / "tiny.ckpt")
    files = reliability.Files(tmp_path, checkpoint, None)
    cases = [c for c in reliability.CASES if c.name in SUBSET]
    rows = {r["name"]: r for r in reliability.run_cases(cases, files, runner=reliability.run_in_process)}
    assert {n: (r["exit"], r["expected"]) for n, r in rows.items() if not r["ok"]} == {}
    assert "percentiles" in rows["predict_16bit_ct_prompt"]["message"]
    assert "no finite value" in rows["predict_nan_tiff"]["message"]
    assert "did you mean 'lung'" in rows["predict_window_unknown"]["message"]
    assert "--series-uid" in rows["predict_two_dicom_series"]["message"]
    assert "redone" in rows["predict_folder_rerun_threshold"]["message"]
    assert all(str(tmp_path) not in r["message"] for r in rows.values())  # shown relative to the work folder
    summary = (tmp_path / "out" / "odd" / "summary.json").read_bytes()
    assert "scan\\xff.png" in json.loads(summary.decode("utf-8"))["pairs"][0]["file"]  # valid UTF-8 whatever the name
    md = reliability.to_markdown(list(rows.values()), {"command": "x", "date": "d", "machine": "m", "commit": "c"})
    assert md.count("\n| ") == len(rows) + 1
