"""Reliability table: bad and odd inputs through the real command line, each with its exit code and message.

Every case runs ``python -m boltzformer.cli ...`` in a subprocess on files this script makes in a work
folder (and a tiny checkpoint it trains in a few steps), then the table is written from what came back:
``docs/reliability.md`` (command, expected and actual exit code, the first line of the message) and
``docs/reliability.json``. Nothing in the table is written by hand.

    PYTHONPATH=src python benchmarks/reliability.py                 # all cases (5-15 min on 2 CPU cores)
    PYTHONPATH=src python benchmarks/reliability.py --only predict_nan_tiff --only evaluate_split_all

Exit codes: 0 done; 1 a folder run finished with files it could not read (each named in one line);
2 a bad argument, file or output path: one line on stderr, nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--preset", "tiny", "--max-steps", "3", "--batch-size", "2", "--val-every", "3", "--val-batches", "1",
         "--image-size", "64", "--set", "num_layers=2", "--set", "num_queries=4", "--quiet"]


class Files:
    """The inputs of the cases, made once in ``work``; ``checkpoint`` and ``run`` come from the caller."""

    def __init__(self, work: Path, checkpoint: Path, run: Path | None) -> None:
        from PIL import Image

        import tifffile

        self.work, self.checkpoint, self.run = work, checkpoint, run
        rng = np.random.default_rng(0)
        d = work / "inputs"
        d.mkdir(parents=True, exist_ok=True)
        self.png = d / "scan.png"
        Image.fromarray((rng.random((80, 96)) * 255).astype(np.uint8)).save(self.png)
        self.png16 = d / "ct16.png"
        Image.fromarray((rng.random((80, 96)) * 3000 + 20000).astype(np.uint16)).save(self.png16)
        self.broken = d / "broken.png"
        self.broken.write_bytes(self.png.read_bytes()[:60])
        self.text = d / "notes.txt"
        self.text.write_text("not an image")
        self.nan_tif = d / "nan.tif"
        tifffile.imwrite(self.nan_tif, np.full((40, 40), np.nan, np.float32))
        self.const = d / "constant.png"
        Image.fromarray(np.full((40, 40), 90, np.uint8)).save(self.const)
        self.one = d / "one_pixel.png"
        Image.fromarray(np.array([[200]], np.uint8)).save(self.one)
        self.strip = d / "strip.png"
        Image.fromarray((rng.random((16, 400)) * 255).astype(np.uint8)).save(self.strip)
        self.exif = d / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # shown rotated 90 degrees
        Image.fromarray((rng.random((40, 80, 3)) * 255).astype(np.uint8)).save(self.exif, exif=exif)
        self.nifti = d / "ct.nii.gz"
        import nibabel as nib

        nib.save(nib.Nifti1Image(rng.normal(-300, 400, (40, 40, 4)).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1])), self.nifti)
        self.dicom2 = self._two_series(d / "two_series")
        self.folder = d / "folder"  # two good images and a broken one
        self.folder.mkdir(exist_ok=True)
        for name in ("a.png", "b.png"):
            Image.fromarray((rng.random((48, 64)) * 255).astype(np.uint8)).save(self.folder / name)
        shutil.copy(self.broken, self.folder / "c_broken.png")
        self.odd_names = d / "odd_names"  # a file name that is not UTF-8
        self.odd_names.mkdir(exist_ok=True)
        shutil.copy(self.png, os.fsdecode(os.fsencode(self.odd_names) + b"/scan\xff.png"))
        self.as_folder = d / "folder.png"  # a folder whose name looks like a mask file
        self.as_folder.mkdir(exist_ok=True)
        self.json_folder = d / "report.json"  # a folder whose name looks like a report
        self.json_folder.mkdir(exist_ok=True)
        self.a_file = d / "a_file"
        self.a_file.write_text("x")
        self.foreign_ckpt = d / "foreign.ckpt"
        import torch

        torch.save({"state_dict": {"w": torch.zeros(2)}}, self.foreign_ckpt)
        self.truncated_ckpt = d / "truncated.ckpt"
        data = checkpoint.read_bytes()
        self.truncated_ckpt.write_bytes(data[: len(data) // 3])
        self.no_layout = d / "no_layout"
        (self.no_layout / "stuff").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _two_series(folder: Path) -> Path:
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

        folder.mkdir(parents=True, exist_ok=True)
        for s, uid in enumerate(("1.2.826.0.1.1", "1.2.826.0.1.2")):
            for k in range(3):
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds = FileDataset(str(folder / f"{s}_{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
                ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = "1.2.826.0.1", uid, "CT", k + 1
                ds.Rows = ds.Columns = 32
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated = ds.BitsStored = 16
                ds.HighBit, ds.PixelRepresentation = 15, 0
                ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
                ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.5 * k], [1.0, 0, 0, 0, 1.0, 0]
                ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
                ds.PixelData = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) + 500 * k).tobytes()
                ds.save_as(folder / f"{s}_{k}.dcm", enforce_file_format=True)
        return folder


@dataclass
class Case:
    name: str
    what: str  # what is odd about the input
    argv: Callable[[Files], list[str]]
    expect: int  # the exit code a correct program gives
    before: Callable[[Files], list[str]] | None = None  # a command run first (e.g. a first folder run)
    needs_run: bool = False  # needs the trained run folder (Files.run)


def _p(f: Files, *extra: str, out: str = "out/mask.png", inp: Path | None = None, prompt: str = "lung nodule in CT scan") -> list[str]:
    return ["predict", "--checkpoint", str(f.checkpoint), "--input", str(inp or f.png), "--prompt", prompt,
            "--out", str(f.work / out), *extra]


def _ev(f: Files, *extra: str, out: str = "reports/r.json") -> list[str]:
    return ["evaluate", "--checkpoint", str(f.checkpoint), "--data", "synthetic", "--limit", "2", "--out", str(f.work / out), *extra]


def _tr(f: Files, *extra: str, out: str = "runs/new") -> list[str]:
    return ["train", "--data", "synthetic", "--out", str(f.work / out), *TRAIN, *extra]


CASES: list[Case] = [
    # --- predict: one image
    Case("predict_ok", "an 8-bit PNG (reference: works)", lambda f: _p(f), 0),
    Case("predict_missing_input", "--input does not exist", lambda f: _p(f, inp=f.work / "nope.png"), 2),
    Case("predict_text_input", "--input is a text file", lambda f: _p(f, inp=f.text), 2),
    Case("predict_truncated_png", "a truncated PNG", lambda f: _p(f, inp=f.broken), 2),
    Case("predict_empty_prompt", "an empty prompt", lambda f: _p(f, prompt="  "), 2),
    Case("predict_16bit_ct_prompt", "16-bit PNG with a CT prompt (grey levels, not HU)", lambda f: _p(f, inp=f.png16, out="out/ct16.png"), 0),
    Case("predict_nan_tiff", "an all-NaN float TIFF", lambda f: _p(f, inp=f.nan_tif, out="out/nan.png"), 2),
    Case("predict_constant", "an image of one value", lambda f: _p(f, inp=f.const, out="out/c.png"), 2),
    Case("predict_1x1", "a 1 x 1 image", lambda f: _p(f, inp=f.one, out="out/one.png"), 2),
    Case("predict_strip", "a 16 x 400 strip (aspect 25:1)", lambda f: _p(f, inp=f.strip, out="out/strip.png"), 2),
    Case("predict_exif_rotated", "a JPEG with EXIF orientation (read as shown)", lambda f: _p(f, inp=f.exif, out="out/rot.png"), 0),
    Case("predict_window_unknown", "--window with a typo", lambda f: _p(f, "--window", "lnug"), 2),
    Case("predict_window_zero_width", "--window 40,0", lambda f: _p(f, "--window", "40,0"), 2),
    Case("predict_window_not_numbers", "--window a,b", lambda f: _p(f, "--window", "a,b"), 2),
    Case("predict_axis_unknown", "--axis diagonal", lambda f: _p(f, "--axis", "diagonal"), 2),
    Case("predict_modality_bad", "--modality with symbols", lambda f: _p(f, "--modality", "C/T!"), 2),
    Case("predict_threshold_out_of_range", "--threshold 1.5", lambda f: _p(f, "--threshold", "1.5"), 2),
    Case("predict_samples_zero", "--samples 0", lambda f: _p(f, "--samples", "0"), 2),
    Case("predict_batch_zero", "--batch-size 0", lambda f: _p(f, "--batch-size", "0"), 2),
    Case("predict_out_is_folder", "--out names an existing folder", lambda f: _p(f, out="inputs/folder.png"), 2),
    Case("predict_out_under_file", "--out inside a file", lambda f: _p(f, out="inputs/a_file/mask.png"), 2),
    Case("predict_folder_to_png", "--input a folder, --out a mask .png", lambda f: _p(f, inp=f.folder), 2),
    Case("predict_volume_to_png", "--input a volume, --out a mask .png", lambda f: _p(f, inp=f.nifti), 2),
    Case("predict_two_dicom_series", "a DICOM folder of two series, no --series-uid (one skipped line)",
         lambda f: _p(f, inp=f.dicom2, out="out/dcm"), 1),
    Case("predict_dicom_series_uid", "the same with --series-uid", lambda f: _p(f, "--series-uid", "1.2.826.0.1.2", inp=f.dicom2, out="out/dcm"), 0),
    Case("predict_checkpoint_missing", "--checkpoint does not exist",
         lambda f: ["predict", "--checkpoint", str(f.work / "no.ckpt"), "--input", str(f.png), "--prompt", "x", "--out", str(f.work / "out/m.png")], 2),
    Case("predict_checkpoint_text", "--checkpoint is a text file",
         lambda f: ["predict", "--checkpoint", str(f.text), "--input", str(f.png), "--prompt", "x", "--out", str(f.work / "out/m.png")], 2),
    Case("predict_checkpoint_truncated", "--checkpoint cut in the middle",
         lambda f: ["predict", "--checkpoint", str(f.truncated_ckpt), "--input", str(f.png), "--prompt", "x", "--out", str(f.work / "out/m.png")], 2),
    Case("predict_checkpoint_foreign", "--checkpoint of another program",
         lambda f: ["predict", "--checkpoint", str(f.foreign_ckpt), "--input", str(f.png), "--prompt", "x", "--out", str(f.work / "out/m.png")], 2),
    Case("predict_checkpoint_folder", "--checkpoint is a folder",
         lambda f: ["predict", "--checkpoint", str(f.folder), "--input", str(f.png), "--prompt", "x", "--out", str(f.work / "out/m.png")], 2),
    # --- predict: folders and reruns
    Case("predict_folder_with_broken_file", "a folder with one broken file (one skipped line)",
         lambda f: _p(f, "--quiet", inp=f.folder, out="out/fold"), 1),
    Case("predict_folder_rerun_same", "the same folder run again (all skipped)",
         lambda f: _p(f, "--quiet", inp=f.folder, out="out/fold2"), 1, before=lambda f: _p(f, "--quiet", inp=f.folder, out="out/fold2")),
    Case("predict_folder_rerun_threshold", "run again with another --threshold (redone, says why)",
         lambda f: _p(f, "--threshold", "0.3", inp=f.folder, out="out/fold3"), 1, before=lambda f: _p(f, "--quiet", inp=f.folder, out="out/fold3")),
    Case("predict_folder_force", "run again with --force", lambda f: _p(f, "--force", "--quiet", inp=f.folder, out="out/fold4"), 1,
         before=lambda f: _p(f, "--quiet", inp=f.folder, out="out/fold4")),
    Case("predict_non_utf8_name", "a file name that is not UTF-8 (summary stays UTF-8)",
         lambda f: _p(f, "--quiet", inp=f.odd_names, out="out/odd"), 0),
    Case("predict_out_folder_is_file", "folder --out is a file", lambda f: _p(f, inp=f.folder, out="inputs/a_file"), 2),
    # --- evaluate
    Case("evaluate_out_not_json", "--out is not .json", lambda f: _ev(f, out="reports/r.txt"), 2),
    Case("evaluate_out_is_folder", "--out is a folder named .json", lambda f: _ev(f, out="inputs/report.json"), 2),
    Case("evaluate_data_missing", "--data folder does not exist",
         lambda f: ["evaluate", "--checkpoint", str(f.checkpoint), "--data", str(f.work / "nodata"), "--out", str(f.work / "r.json")], 2),
    Case("evaluate_samples_zero", "--samples 0", lambda f: _ev(f, "--samples", "0"), 2),
    Case("evaluate_split_all", "--split all (a whole external dataset)", lambda f: _ev(f, "--split", "all", out="reports/all.json"), 0),
    Case("evaluate_rerun_up_to_date", "the same evaluation again (up to date)", lambda f: _ev(f, out="reports/same.json"), 0,
         before=lambda f: _ev(f, out="reports/same.json")),
    Case("evaluate_rerun_other_seed", "again with another --seed (evaluated again, says why)", lambda f: _ev(f, "--seed", "1", out="reports/seed.json"), 0,
         before=lambda f: _ev(f, out="reports/seed.json")),
    # --- train
    Case("train_data_missing", "--data folder does not exist", lambda f: ["train", "--data", str(f.work / "nodata"), "--out", str(f.work / "runs/x"), *TRAIN], 2),
    Case("train_out_is_file", "--out is a file", lambda f: _tr(f, out="inputs/a_file"), 2),
    Case("train_resume_nothing", "--resume where no run is", lambda f: _tr(f, "--resume", out="runs/none"), 2),
    Case("train_resume_other_preset", "--resume with another --preset (config.json untouched)",
         lambda f: ["train", "--data", "synthetic", "--out", str(f.run), "--resume", "--preset", "hiera-s", "--max-steps", "6"], 2, needs_run=True),
    Case("train_resume_other_data_seed", "--resume with another --data-seed",
         lambda f: ["train", "--data", "synthetic", "--out", str(f.run), "--resume", *TRAIN, "--max-steps", "6", "--data-seed", "5"], 2, needs_run=True),
    Case("train_over_a_run", "train into a run folder without --resume", lambda f: ["train", "--data", "synthetic", "--out", str(f.run), *TRAIN], 2, needs_run=True),
    Case("train_max_steps_zero", "--max-steps 0", lambda f: _tr(f, "--max-steps", "0"), 2),
    Case("train_checkpoint_every_negative", "--checkpoint-every-min -1", lambda f: _tr(f, "--checkpoint-every-min", "-1"), 2),
    Case("train_freeze_unknown", "--freeze wings", lambda f: _tr(f, "--freeze", "wings"), 2),
    # --- import, convert, explain, app, the parser
    Case("import_source_missing", "source folder does not exist", lambda f: ["import", str(f.work / "nosource"), "--out", str(f.work / "imp")], 2),
    Case("import_no_layout", "source of no known layout", lambda f: ["import", str(f.no_layout), "--out", str(f.work / "imp")], 2),
    Case("import_out_is_file", "--out is a file", lambda f: ["import", str(f.no_layout), "--kind", "folder", "--out", str(f.a_file)], 2),
    Case("convert_weights_missing", "--weights does not exist",
         lambda f: ["convert", "--preset", "tiny", "--weights", str(f.work / "no.pt"), "--out", str(f.work / "conv.ckpt")], 2),
    Case("explain_image_missing", "--image does not exist",
         lambda f: ["explain", "--checkpoint", str(f.checkpoint), "--image", str(f.work / "no.png"), "--prompt", "x", "--out", str(f.work / "ex")], 2),
    Case("app_checkpoint_missing", "app --checkpoint does not exist", lambda f: ["app", "--checkpoint", str(f.work / "no.ckpt")], 2),
    Case("version", "--version", lambda f: ["--version"], 0),
    Case("unknown_command", "an unknown command", lambda f: ["segment"], 2),
]


def run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "boltzformer.cli", *argv], cwd=cwd, env=env, capture_output=True, timeout=600)
    return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


def run_in_process(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """The same through ``boltzformer.cli.commands`` in this process (for the test's quick subset)."""
    from boltzformer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def _message(rc: int, stdout: str, stderr: str) -> str:
    """The line a user reads: for exit 2 the first error line on stderr; otherwise the first skipped
    file (exit 1), what a rerun redid (if anything) and the last line of the output."""
    noise = ("Warning", "warn(", "GPU available", "TPU available", "`Trainer", "  ")
    err = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith(noise) and "\r" not in ln]
    errors = [ln for ln in err if "error" in ln.lower()] or err
    if rc not in (0, 1) and errors:
        return errors[0]
    out = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    said = [ln for ln in err + out if any(w in ln for w in ("redone", "again", "--force", "up to date", "intensities:"))][:1]
    if rc == 1:  # a folder run that skipped files: the first skipped line too
        said = errors[:1] + said
    last = out[-1:] if out else errors[:1]
    return " | ".join(dict.fromkeys(said + last))  # once each


def run_cases(cases: list[Case], files: Files, runner=run_subprocess) -> list[dict]:
    rows = []
    for case in cases:
        if case.needs_run and files.run is None:
            continue
        if case.before is not None:
            runner(case.before(files), files.work)
        argv = case.argv(files)
        t0 = time.perf_counter()
        rc, out, err = runner(argv, files.work)
        shown = " ".join(("boltzformer", *argv)).replace(str(files.work) + os.sep, "")
        rows.append({"name": case.name, "what": case.what, "command": shown, "expected": case.expect, "exit": rc,
                     "ok": rc == case.expect, "message": _message(rc, out, err).replace(str(files.work) + os.sep, ""),
                     "seconds": round(time.perf_counter() - t0, 2)})
    return rows


def to_markdown(rows: list[dict], header: dict) -> str:
    lines = [
        "# Reliability: bad and odd inputs through the command line",
        "",
        f"Generated by `{header['command']}` on {header['date']} ({header['machine']}), commit {header['commit']}:",
        "each row ran the real CLI in a subprocess; the message is the first error line on stderr (else the",
        "last line of the output). Exit 0: done; 1: a folder run that skipped unreadable files; 2: a bad",
        f"argument, file or output path, nothing written. {sum(r['ok'] for r in rows)} of {len(rows)} cases give the expected exit code.",
        "",
        "| # | input | command | expected | exit | message |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        mark = "" if r["ok"] else " **(unexpected)**"
        lines.append(f"| {i} | {esc(r['what'])} | `{esc(r['command'])}` | {r['expected']} | {r['exit']}{mark} | {esc(r['message'])} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability"), help="writes OUT.md and OUT.json")
    parser.add_argument("--only", action="append", default=[], help="run only these case names")
    parser.add_argument("--workdir", default=None, help="keep the inputs and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from boltzformer.provenance import git_commit

    work = Path(args.workdir or tempfile.mkdtemp(prefix="boltzformer-reliability-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    if not (run / "last.ckpt").exists():
        rc, _, err = run_subprocess(["train", "--data", "synthetic", "--out", str(run), *TRAIN], work)
        if rc != 0:
            sys.exit(f"training the tiny checkpoint failed:\n{err[-2000:]}")
    files = Files(work, run / "last.ckpt", run)
    cases = [c for c in CASES if not args.only or c.name in args.only]
    rows = run_cases(cases, files)
    import platform

    header = {"command": "python benchmarks/reliability.py", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{os.cpu_count()}-core CPU, {platform.system()}", "commit": git_commit() or "unknown",
              "checkpoint": "tiny preset, 64 px, trained 3 steps (" + " ".join(TRAIN) + ")"}
    for r in rows:
        print(f"{'ok ' if r['ok'] else 'BAD'} {r['exit']} {r['name']}: {r['message'][:150]}")
    if not args.only:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"header": header, "cases": rows}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(to_markdown(rows, header), encoding="utf-8")
        print(f"{out.with_suffix('.md')}: {len(rows)} cases, {sum(r['ok'] for r in rows)} as expected")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
