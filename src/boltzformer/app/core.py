"""What the app computes, without the browser: an uploaded file and prompts in, per-prompt results out.

:func:`load_upload` reads a file through the same checked readers as the command line and enforces
the pixel / voxel limit; :func:`segment` runs the predictor on it (each image or slice encoded once for
all the prompts that see the same intensities; K sampling passes for the uncertainty map, the per-layer
sampling maps from the cached features, the lesion list, the existence probability when the model has
an existence head) and writes one mask per prompt with the one writer (PNG for 2D, NIfTI for a volume).
With a sliding window (``Predictor(model, window_overlap=O)``, for models trained on native-resolution
patches) there are no sampling maps: they need the whole image encoded at once.
:func:`summary_rows` and :func:`lesion_rows` turn the results into table rows. The gradio
layout (``ui.py``) only wires these functions to widgets, so tests call them directly.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from boltzformer.io.formats import IMAGE_SUFFIXES as _READABLE, suffix_of as _suffix
from boltzformer.io.images import DataError
from boltzformer.io.medical import MedicalImage
from boltzformer.io.windows import to_uint8, volume_slices
from boltzformer.model.text import check_prompts
from boltzformer.predict.engine import Predictor
from boltzformer.predict.explain import sampling_maps, save_sampling_grid
from boltzformer.predict.lesions import Lesion, lesions
from boltzformer.predict.outputs import prompt_slug, write_prediction
from boltzformer.predict.results import Prediction, VolumePrediction
from boltzformer.predict.visualize import overlay, uncertainty_image

__all__ = [
    "AppImage",
    "MAX_PIXELS",
    "MAX_PROMPTS",
    "MAX_VOXELS",
    "PromptResult",
    "lesion_rows",
    "load_upload",
    "parse_prompts",
    "segment",
    "summary_rows",
]

MAX_PIXELS = 2**25  # 2D uploads: about 33 megapixels (5792 x 5792)
MAX_VOXELS = 2**26  # volumes: about 67 M voxels (512 x 512 x 256)
MAX_PROMPTS = 8
MAX_ZIP_MEMBERS = 4096
# the upload filter, from io's one list of suffixes (io/formats.py); .zip: the DICOM files of one series
IMAGE_SUFFIXES = tuple(s for s in _READABLE if s not in (".nii", ".nii.gz", ".dcm", ".dicom"))
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".dicom", ".zip")


@dataclass
class AppImage:
    """An uploaded image: ``image`` as :func:`boltzformer.io.medical.load_image` read it (``array``
    float32 (H, W) / (H, W, 3), or (D, H, W) slices-first in display orientation) and the name the
    user gave the file."""

    image: MedicalImage
    name: str

    @property
    def is_volume(self) -> bool:
        return self.image.is_volume

    @property
    def num_slices(self) -> int:
        return self.image.array.shape[0] if self.is_volume else 1

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        """(row, col) mm of the shown image, when the file says."""
        spacing = self.image.spacing
        if spacing is None:
            return None
        return (float(spacing[1]), float(spacing[2])) if self.is_volume else (float(spacing[0]), float(spacing[1]))

    @property
    def voxel_ml(self) -> float | None:
        spacing = self.image.spacing
        return float(np.prod(spacing)) / 1000 if self.is_volume and spacing is not None else None

    def check_slice(self, index: int | None) -> int:
        """The index of the shown slice (the middle one by default; 0 for 2D)."""
        if not self.is_volume:
            return 0
        index = self.num_slices // 2 if index is None else int(index)
        if not 0 <= index < self.num_slices:
            raise ValueError(f"slice must be in [0, {self.num_slices - 1}], got {index}")
        return index


@dataclass
class PromptResult:
    """Everything shown for one prompt. Images are on the shown slice; ``mask_path`` holds the whole
    mask (the image's grid, or every slice of a volume in the file's own geometry); ``sampling_grid`` is
    None with a sliding window (the predictor's ``window_overlap``), where no sampling maps are drawn."""

    prompt: str
    overlay: Image.Image
    uncertainty: Image.Image
    sampling_grid: Image.Image | None
    lesions: list[Lesion]
    existence: float | None
    agreement: float
    mask_pixels: int
    area_fraction: float
    max_probability: float
    mask_path: Path
    volume_voxels: int | None = None
    volume_ml: float | None = None


def parse_prompts(text: str, *, max_prompts: int = MAX_PROMPTS) -> list[str]:
    """Prompts from a text box: one per line or separated by ';', blanks dropped, duplicates kept once."""
    if not isinstance(text, str):
        raise TypeError(f"prompts must be a string, got {type(text).__name__}")
    prompts = list(dict.fromkeys(p.strip() for p in re.split(r"[;\n]", text) if p.strip()))
    if not prompts:
        raise ValueError("prompts: type at least one prompt, e.g. 'lung nodule in CT scan'")
    if len(prompts) > max_prompts:
        raise ValueError(f"prompts: at most {max_prompts} prompts at a time, got {len(prompts)}")
    return check_prompts(prompts, name="prompt")


def _header_shape(path: Path, suffix: str) -> tuple[tuple[int, ...], bool] | None:
    """(shape, is_volume) from the file's header, without decoding the pixels; None when the header
    cannot be read (the reader then says why)."""
    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            return tuple(int(n) for n in nib.load(path).shape), True
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape = tuple(int(n) for n, a in zip(series.shape, series.axes) if a not in "S")
                return shape, len(shape) > 2
        if suffix == ".dcm":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return (int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("Rows", 0)), int(ds.get("Columns", 0))), False
        with Image.open(path) as img:
            return (img.size[1], img.size[0]), False
    except Exception:
        return None


def _check_size(name: str, shape: Sequence[int], is_volume: bool, *, max_pixels: int, max_voxels: int) -> None:
    n = int(np.prod(shape, dtype=np.float64))
    if is_volume and n > max_voxels:
        raise DataError(f"{name}: volume of {tuple(shape)} = {n} voxels is over the app's limit of {max_voxels} voxels")
    if not is_volume and n > max_pixels:
        raise DataError(f"{name}: image of {tuple(shape)} = {n} pixels is over the app's limit of {max_pixels} pixels")


def _unzip_series(path: Path, dest: Path, *, max_voxels: int) -> Path:
    """Extract the files of a zipped DICOM series flat into ``dest`` (member names are not used as
    paths, so nothing lands outside it), refusing archives that would expand past what ``max_voxels``
    16-bit voxels and 64 KiB of header per file take."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")
                       and "__MACOSX" not in m.filename]
            if not members:
                raise DataError(f"{path.name}: the zip archive holds no files; expected the DICOM files of one series")
            total = sum(m.file_size for m in members)
            max_bytes = 2 * max_voxels + 65536 * len(members)
            if len(members) > MAX_ZIP_MEMBERS or total > max_bytes:
                raise DataError(f"{path.name}: the zip archive holds {len(members)} files, {total} bytes uncompressed; "
                                f"the app takes at most {MAX_ZIP_MEMBERS} files and {max_bytes} bytes")
            for i, m in enumerate(members):
                # zipfile stops reading at the declared file_size, so the total above bounds what is written
                with zf.open(m) as src, open(dest / f"{i:05d}_{Path(m.filename).name}", "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except DataError:
        raise
    except Exception as exc:  # BadZipFile, CRC errors, truncated archives
        raise DataError(f"{path.name} could not be read as a zip archive ({type(exc).__name__}: {exc})") from None
    return dest


def load_upload(path: str | Path, *, max_pixels: int = MAX_PIXELS, max_voxels: int = MAX_VOXELS) -> AppImage:
    """Read an uploaded file with :func:`boltzformer.io.medical.load_image`, the command line's reader.

    Takes PNG/JPEG/BMP, TIFF (8/16-bit, stacks), NIfTI (.nii, .nii.gz), a DICOM file (.dcm) or a zipped
    DICOM series (.zip). The size is checked from the header before the pixels are decoded.

    Raises:
        DataError: unknown extension, unreadable file, or more pixels / voxels than allowed; the
            message names the file and what was expected.
    """
    from boltzformer.io.medical import check_segmentable, load_image

    path = Path(path)
    suffix = _suffix(path)
    if suffix not in IMAGE_SUFFIXES + VOLUME_SUFFIXES:
        raise DataError(f"{path.name}: unsupported file type {suffix or '(none)'}; expected one of "
                        f"{', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)} (.zip: the DICOM files of one series)")
    if suffix == ".zip":
        with tempfile.TemporaryDirectory(prefix="boltzformer-dicom-") as folder:
            _unzip_series(path, Path(folder), max_voxels=max_voxels)
            image = load_image(folder)
    else:
        header = _header_shape(path, suffix)
        if header is not None:
            _check_size(path.name, *header, max_pixels=max_pixels, max_voxels=max_voxels)
        image = load_image(path)
    shape = image.array.shape if image.is_volume else image.array.shape[:2]
    _check_size(path.name, shape, image.is_volume, max_pixels=max_pixels, max_voxels=max_voxels)
    check_segmentable(image)  # all NaN, one value, too small or a thin strip: one message
    return AppImage(image, path.name)


def _display(image: AppImage, prompt: str | None = None) -> np.ndarray:
    """The whole image or volume as the model sees it, uint8: the CT window of the site the prompt
    names, percentiles for other modalities, 8-bit files unchanged (one normalisation per volume)."""
    return to_uint8(image.image, prompt=prompt)


def preview(image: AppImage, slice_index: int | None = None) -> np.ndarray:
    """The shown image (H, W) or (H, W, 3) uint8."""
    display = _display(image)
    return display[image.check_slice(slice_index)] if image.is_volume else display


@torch.inference_mode()
def segment(
    predictor: Predictor,
    image: AppImage,
    prompts: str | Sequence[str],
    *,
    out_dir: str | Path,
    samples: int = 4,
    slice_index: int | None = None,
    context: str = "2d",
    progress: Callable[[float, str], None] | None = None,
) -> list[PromptResult]:
    """Segment ``image`` for each prompt with ``samples`` (K) sampling passes.

    The mask is the mean probability of the K passes (sampling seeds ``predictor.seed`` ..
    ``+ K - 1``) above ``predictor.threshold`` (empty when the existence head says the target is
    absent). A volume is segmented slice by slice (:meth:`Predictor.segment_volume`, one slice per batch,
    every slice encoded once for all the prompts that share its intensities), for the NIfTI mask; the
    images, lesions and existence probability are those of ``slice_index`` (default: the middle slice).
    With ``predictor.window_overlap`` set, the window slides over each image or slice at its own
    resolution (as ``evaluate --window-overlap``; its windows are encoded for each prompt) and no
    sampling maps are drawn (``sampling_grid`` None).

    Args:
        prompts: a list of prompts, or the text box's string (see :func:`parse_prompts`).
        out_dir: folder for the mask files (``<name>_NN_<prompt slug>_mask.png`` or ``.nii.gz``).
        context: volumes: ``"2d"`` (each slice alone) or ``"2.5d"`` (neighbours as the RGB channels).
        progress: called with (fraction done, message) after each slice of a volume.
    """
    prompts = parse_prompts(prompts) if isinstance(prompts, str) else check_prompts(list(prompts), name="prompt")
    if not 2 <= int(samples) <= 64:
        raise ValueError(f"samples (K) must be in [2, 64], got {samples}")
    shown = image.check_slice(slice_index)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", image.name.split(".")[0])[:60] or "image"
    # prompts that see the same intensities (the CT window of the site a prompt names) share one encoding
    groups: list[tuple[np.ndarray, list[str]]] = []
    order = {prompt: i for i, prompt in reversed(list(enumerate(prompts)))}  # the first place of each prompt
    for prompt in prompts:
        display = _display(image, prompt)
        same = next((g for g in groups if np.array_equal(g[0], display)), None)
        if same is None:
            groups.append((display, [prompt]))
        else:
            same[1].append(prompt)
    found: dict[str, tuple[Prediction | VolumePrediction, np.ndarray, Image.Image | None]] = {}  # prompt -> result, shown, grid
    windowed = predictor.window_overlap is not None  # sampling maps need the whole image encoded
    total, done = len(prompts) * image.num_slices, 0
    for display, group in groups:
        if image.is_volume:
            def report(slices_done: int, slices: int, group: list[str] = group, start: int = done) -> None:
                if progress is not None:
                    progress((start + slices_done * len(group)) / total, f"{'; '.join(group)}: slice {slices_done}/{slices}")

            results: Sequence[Prediction | VolumePrediction] = predictor.segment_volume(
                display, group, context=context, batch_size=1, samples=int(samples), overlap="independent", progress=report)
            done += len(group) * image.num_slices
            shown_u8 = volume_slices(display, context=context)[shown]
            if not windowed:
                predictor.set_image(shown_u8)  # the shown slice, whose sampling maps are drawn
        else:
            results, shown_u8 = predictor.segment(display, group, samples=int(samples)), display  # the image stays set
        for prompt, result in zip(group, results):
            grid: Image.Image | None = None
            if not windowed:
                grid = save_sampling_grid(sampling_maps(predictor, None, prompt), shown_u8,
                                          out_dir / f"{order[prompt] + 1:02d}_{prompt_slug(prompt)}_sampling.png")
            found[prompt] = (result, shown_u8, grid)
    out = []
    for i, prompt in enumerate(prompts):
        result, shown_u8, grid = found[prompt]
        suffix = ".nii.gz" if image.is_volume else ".png"
        written = write_prediction(result, image.image, shown_u8, out_dir / f"{stem}_{i + 1:02d}_{prompt_slug(prompt)}_mask{suffix}",
                                   with_overlay=False, with_lesions=False)
        if image.is_volume:
            mask, prob, std = result.mask[shown], result.probability[shown], result.std[shown]  # type: ignore[index]
            existence = None if result.existence is None else float(result.existence[shown])  # type: ignore[index]
            agreement = float(result.agreement[shown])  # type: ignore[index]
            voxels: int | None = int(result.mask.sum())
        else:
            mask, prob, std, existence, agreement = result.mask, result.probability, result.std, result.existence, result.agreement
            voxels = None
        out.append(PromptResult(
            prompt=prompt,
            overlay=overlay(shown_u8, mask, label=prompt),
            uncertainty=uncertainty_image(shown_u8, std),
            sampling_grid=grid,
            lesions=lesions(mask, probability=prob, spacing=image.pixel_spacing) if image.is_volume else written.lesions,
            existence=existence,  # mean over the K passes; None without an existence head
            agreement=float(agreement),
            mask_pixels=int(mask.sum()),
            area_fraction=float(mask.mean()),
            max_probability=float(prob.max()),
            mask_path=written.mask,
            volume_voxels=voxels,
            volume_ml=voxels * image.voxel_ml if voxels is not None and image.voxel_ml is not None else None,
        ))
    return out


SUMMARY_HEADERS = ["prompt", "existence probability", "agreement of K passes", "lesions", "mask pixels",
                   "% of image", "max probability", "volume"]
LESION_HEADERS = ["prompt", "lesion", "area (px)", "area (mm²)", "centroid (row, col)", "box (r0, c0, r1, c1)",
                  "mean probability", "max probability"]


def summary_rows(results: Sequence[PromptResult]) -> list[list]:
    """One row per prompt (columns :data:`SUMMARY_HEADERS`); "n/a" where the model has no existence head."""
    rows = []
    for r in results:
        volume = "-" if r.volume_voxels is None else f"{r.volume_voxels} voxels" + (
            f" ({r.volume_ml:.2f} mL)" if r.volume_ml is not None else "")
        rows.append([r.prompt, "n/a" if r.existence is None else f"{r.existence:.3f}", f"{r.agreement:.3f}",
                     len(r.lesions), r.mask_pixels, f"{100 * r.area_fraction:.3f}", f"{r.max_probability:.3f}", volume])
    return rows


def lesion_rows(results: Sequence[PromptResult]) -> list[list]:
    """One row per lesion of every prompt (columns :data:`LESION_HEADERS`), largest first."""
    rows = []
    for r in results:
        for x in r.lesions:
            rows.append([r.prompt, x.label, x.area_px, "-" if x.area_mm2 is None else f"{x.area_mm2:.2f}",
                         f"({x.centroid[0]:.1f}, {x.centroid[1]:.1f})", str(x.bbox),
                         "-" if x.mean_probability is None else f"{x.mean_probability:.3f}",
                         "-" if x.max_probability is None else f"{x.max_probability:.3f}"])
    return rows
