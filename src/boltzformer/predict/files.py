"""Files in, masks out: images and volumes, many prompts, whole folders, resumable.

- :func:`segment_file`: any file :func:`~boltzformer.io.medical.load_image` reads -> intensities
  normalised as the modality / prompt / window say -> the :class:`~boltzformer.predict.engine.Predictor`
  (one image, or a volume slice by slice) -> :class:`FileResult`.
- :func:`segment_volume`: a (D, H, W) uint8 volume through the Predictor (each batch of slices encoded
  once for all prompts, optionally 2.5D) -> one mask per prompt.
- :func:`run_batch`: a file or a folder of them, every prompt; writes one mask per (file, prompt)
  with the one writer (:func:`~boltzformer.predict.outputs.write_prediction`) beside a small JSON record,
  skips the pairs whose outputs are already complete (so an interrupted run resumes), and reports a bad
  file and goes on with the others.

Output layout of :func:`run_batch` in ``out``: ``<input name>/<prompt slug>.png`` (2D; plus
``_overlay.png`` and ``_lesions.json``) or ``<prompt slug>.nii.gz`` (volumes, in the input's geometry),
and ``<prompt slug>.json`` (the record, written last), then ``summary.json`` for the whole run.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from boltzformer.config import config_to_dict
from boltzformer.io.atomic import write_json_atomic
from boltzformer.io.images import DataError
from boltzformer.io.formats import IMAGE_SUFFIXES, is_dicom_file as _is_dicom_file
from boltzformer.io.medical import check_segmentable, load_image
from boltzformer.io.windows import intensity_plan, to_uint8
from boltzformer.model import BoltzFormer
from boltzformer.model.text import check_prompts
from boltzformer.predict.engine import Predictor
from boltzformer.predict.outputs import prompt_slug, write_prediction
from boltzformer.predict.results import Prediction, VolumePrediction
from boltzformer.provenance import differences, file_sha256, made_by, tree_fingerprint

__all__ = ["FileResult", "PromptResult", "SummaryRow", "find_inputs", "prompt_slug", "run_batch", "segment_file", "segment_volume", "summary_table"]

_IMAGE_SUFFIXES = IMAGE_SUFFIXES  # what io.load_image reads (io/formats.py)

#: one prompt on one file: a :class:`Prediction` (2D) or a :class:`VolumePrediction`, on the input's own grid
PromptResult = Union[Prediction, VolumePrediction]


@dataclass
class FileResult:
    image: object  # boltzformer.io.medical.MedicalImage
    display: np.ndarray  # the uint8 intensities the model saw, (H, W[, 3]) or (D, H, W)
    results: list[PromptResult]
    seconds: float
    intensity: dict = field(default_factory=dict)  # how the file's values became 0-255 (windows.intensity_plan)


@dataclass
class SummaryRow:
    """One line of the run summary."""

    file: str
    prompt: str
    status: str  # "done", "skipped" (already complete) or "error"
    present: bool | None = None
    area_px: int | None = None  # pixels (2D) or voxels (volumes) in the mask
    area_mm: float | None = None  # mm^2 (2D) or mm^3 (volumes) when the spacing is known
    existence: float | None = None  # max over slices for volumes
    seconds: float | None = None
    output: str | None = None
    error: str | None = None


def segment_volume(
    model: BoltzFormer,
    volume: np.ndarray,
    prompts: Sequence[str],
    *,
    context: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    threshold: float = 0.5,
    existence_threshold: float = 0.5,
    image_size: int | None = None,
    overlap: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    window_overlap: float | None = None,
) -> list[VolumePrediction]:
    """Segment every prompt in every slice of a (D, H, W) uint8 volume: a :class:`Predictor` with these
    settings, then :meth:`Predictor.segment_volume` (see :mod:`boltzformer.predict.volumes` for
    ``context``, ``batch_size``, ``overlap`` and ``progress``). With an existence head, the slices where
    the target is judged absent get an empty mask."""
    predictor = Predictor(model, image_size=image_size, threshold=threshold, seed=seed,
                          existence_threshold=existence_threshold, window_overlap=window_overlap)
    return predictor.segment_volume(volume, prompts, context=context, batch_size=batch_size, overlap=overlap,
                                    progress=progress)


def segment_file(
    model: BoltzFormer,
    path: str | Path,
    prompts: Sequence[str],
    *,
    modality: str | None = None,
    window: str | tuple[float, float] | None = None,
    axis: str | int | None = None,
    context: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    threshold: float = 0.5,
    existence_threshold: float = 0.5,
    series_uid: str | None = None,
    overlap: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    window_overlap: float | None = None,
) -> FileResult:
    """Read one image, volume or DICOM series and segment every prompt in it.

    The intensities are normalised once per file (:func:`~boltzformer.io.windows.to_uint8`): a CT
    window by name or ``(center, width)``, else the window of the site the first prompt names, else
    percentiles for non-CT; 8-bit files as they are.

    Raises:
        DataError: the file cannot be read (the message names it).
    """
    prompts = check_prompts(prompts, name="prompt")
    t0 = time.perf_counter()
    image = load_image(path, modality=modality, axis=axis, series_uid=series_uid)
    check_segmentable(image)
    plan = intensity_plan(image, window=window, prompt=prompts[0])
    display = to_uint8(image, window=window, prompt=prompts[0])
    predictor = Predictor(model, threshold=threshold, seed=seed, existence_threshold=existence_threshold,
                          window_overlap=window_overlap)
    results: list[PromptResult]
    if image.is_volume:
        results = list(predictor.segment_volume(display, prompts, context=context, batch_size=batch_size, overlap=overlap,
                                                progress=progress))
    else:
        results = list(predictor.segment(display, prompts))
    return FileResult(image=image, display=display, results=results, seconds=time.perf_counter() - t0, intensity=plan)


def find_inputs(path: str | Path) -> list[Path]:
    """The inputs under ``path``: the file itself, a DICOM series folder, or every image file and
    sub-folder (a DICOM series each) of a folder, sorted. Hidden entries are ignored."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--input {path} does not exist")
    if path.is_file():
        return [path]
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    if any(p.suffix.lower() in (".dcm", ".dicom") or (p.suffix == "" and _is_dicom_file(p)) for p in files):
        return [path]  # the folder is one DICOM series
    found = [p for p in entries if p.is_dir() or p.name.lower().endswith(_IMAGE_SUFFIXES)]
    if not found:
        raise DataError(f"--input {path} holds no image files ({', '.join(_IMAGE_SUFFIXES)}) and no DICOM series folders")
    return found


def _input_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", *_IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# the options of segment_file that change a mask, and the inputs they apply to (see _settings)
MASK_SETTINGS = ("seed", "threshold", "existence_threshold", "modality", "window", "axis", "context", "batch_size", "series_uid",
                 "overlap", "window_overlap")


def _settings(options: dict, *, volume: bool, eight_bit: bool, physical: bool) -> dict:
    """The options that change this input's masks, JSON-normalised: the intensity options only where
    the intensities are not used as stored (8-bit files are), ``modality`` only where it can make them
    Hounsfield units (NIfTI, DICOM), the slicing options only for volumes."""
    keys = ["seed", "threshold", "existence_threshold", "window_overlap"]
    if not eight_bit:
        keys += ["modality", "window"] if physical else ["window"]
    if volume:
        keys += ["axis", "context", "batch_size", "overlap"] + (["series_uid"] if physical else [])
    defaults = {"seed": 0, "threshold": 0.5, "existence_threshold": 0.5, "context": "2d", "batch_size": 8}
    return json.loads(json.dumps({k: options.get(k, defaults.get(k)) for k in keys}))


def _input_kind(image) -> dict:
    """What the rerun check needs to know of an input without reading it again."""
    return {"volume": bool(image.is_volume), "eight_bit": image.meta.get("source_dtype") == "uint8",
            "physical": image.meta.get("format") in ("nifti", "dicom")}


def _complete_record(record_path: Path) -> dict | None:
    """The record of a finished (file, prompt), or None when it or its mask is missing or altered."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        mask = record_path.parent / record["output"]
        return record if mask.is_file() and file_sha256(mask) == record["sha256"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stale(record: dict, path: Path, model_by: dict, options: dict) -> list[str]:
    """Why a complete record is not what this run would write (empty: it is)."""
    source = record.get("source") or {}
    if "kind" not in source:
        return ["no provenance"]
    if source.get("sha256") != tree_fingerprint(path):
        return ["input file changed"]
    current = dict(model_by, settings=_settings(options, **source["kind"]))
    return differences(record.get("made_by"), current)


def run_batch(
    model: BoltzFormer,
    inputs: Sequence[Path],
    prompts: Sequence[str],
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    **options,
) -> list[SummaryRow]:
    """Segment every prompt in every input; see the module docstring for the outputs.

    Every record says what made it (``"made_by"``: ``checkpoint``'s SHA-256 and path, the model config,
    the options that change this input's masks, the package version and commit; ``"source"``: the
    input's SHA-256). A (file, prompt) whose record and mask exist, agree, and were made by the same
    model, settings, code and input is skipped ("skipped"); any other is redone, and ``log`` says how
    many and why. ``force`` redoes every pair. A file that cannot be read is reported (``log``) and
    recorded as "error"; the others go on. ``options`` are :func:`segment_file`'s.
    """
    prompts = check_prompts(prompts, name="--prompt")
    out = Path(out)
    model_by = made_by(checkpoint, config_to_dict(model.config) if model.config is not None else None, {})
    rows: list[SummaryRow] = []
    nms = (options.get("overlap") or getattr(model.config, "prompt_overlap", "independent")) == "nms" and len(prompts) > 1
    redone: dict[str, int] = {}
    n_redone = 0
    for i, path in enumerate(inputs, 1):
        folder = out / _input_name(path)
        slugs = [prompt_slug(p) for p in prompts]
        done = {p: None if force else _complete_record(folder / f"{s}.json") for p, s in zip(prompts, slugs)}
        for p in prompts:
            if done[p] is not None:
                why = _stale(done[p], path, model_by, options)  # type: ignore[arg-type]
                if why:
                    done[p] = None
                    n_redone += 1
                    for reason in why:
                        redone[reason] = redone.get(reason, 0) + 1
        todo = [p for p in prompts if done[p] is None]
        if todo and nms:  # one label per voxel: every prompt's mask depends on the others, so all are redone
            todo, done = list(prompts), dict.fromkeys(prompts)
        for p in prompts:
            if done[p] is not None:
                rec = done[p]
                rows.append(SummaryRow(str(path), p, "skipped", rec["present"], rec["area_px"], rec["area_mm"],
                                       rec["existence"], None, str(folder / rec["output"])))
        if not todo:
            log(f"[{i}/{len(inputs)}] {path.name}: {len(prompts)} skipped (complete)")
            continue
        try:
            result = segment_file(model, path, todo, **options)
        except (DataError, ValueError) as exc:
            log(f"[{i}/{len(inputs)}] error: {exc} (skipped)")
            rows.extend(SummaryRow(str(path), p, "error", error=str(exc)) for p in todo)
            continue
        source = {"sha256": tree_fingerprint(path), "kind": _input_kind(result.image)}
        by = dict(model_by, settings=_settings(options, **source["kind"]))
        per_prompt = result.seconds / len(todo)
        for r in result.results:
            slug = prompt_slug(r.prompt)
            suffix = ".nii.gz" if result.image.is_volume else ".png"  # type: ignore[attr-defined]
            written = write_prediction(r, result.image, result.display, folder / f"{slug}{suffix}")  # type: ignore[arg-type]
            record = dict(written.record, intensity=result.intensity, seconds=per_prompt, made_by=by, source=source)
            write_json_atomic(record, folder / f"{slug}.json")  # last: marks the pair complete
            rows.append(SummaryRow(str(path), r.prompt, "done", record["present"], record["area_px"], record["area_mm"],
                                   record["existence"], per_prompt, str(written.mask)))
        log(f"[{i}/{len(inputs)}] {path.name}: {len(todo)} done in {result.seconds:.1f} s"
            + (f", {len(prompts) - len(todo)} skipped" if len(todo) < len(prompts) else ""))
    if force:
        log("--force: every pair redone")
    elif redone:
        log(f"{n_redone} (file, prompt) pair(s) redone, made by something else before: "
            + "; ".join(f"{k} ({v})" for k, v in sorted(redone.items())))
    shown = {k: v for k, v in options.items() if k in MASK_SETTINGS}  # not the progress callback
    write_json_atomic({"made_by": model_by, "options": json.loads(json.dumps(shown)), "pairs": [asdict(r) for r in rows]},
                      out / "summary.json")
    return rows


def summary_table(rows: Sequence[SummaryRow]) -> str:
    """The run summary as an aligned text table; errors are listed under it."""
    header = ("file", "prompt", "status", "present", "area", "existence", "time (s)")
    lines = [header]
    for r in rows:
        unit = "mm3" if (r.output or "").endswith(".nii.gz") else "mm2"
        area = "" if r.area_px is None else f"{r.area_px}" + (f" ({r.area_mm:.1f} {unit})" if r.area_mm is not None else "")
        lines.append((
            Path(r.file).name, r.prompt, r.status,
            "" if r.present is None else ("yes" if r.present else "no"), area,
            "" if r.existence is None else f"{r.existence:.2f}", "" if r.seconds is None else f"{r.seconds:.2f}",
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    table = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    errors = {r.file: r.error for r in rows if r.status == "error"}
    return "\n".join(table + [f"error: {Path(f).name}: {e}" for f, e in errors.items()])
