"""Intensities to 8-bit model input: CT windows, percentile normalisation, 2D / 2.5D slices of a volume.

- :data:`WINDOWS`: CT window per site, ``name -> (center, width)`` in Hounsfield units
- :func:`window_for_prompt`: the site a prompt names ("lung nodule in CT scan" -> ``"lung"``)
- :func:`to_uint8`: CT -> window; MR and other non-8-bit data -> percentiles 0.5-99.5; 8-bit data unchanged
- :func:`volume_slices`: (D, H, W) uint8 -> per slice (H, W, 3) uint8, the slice alone ("2d") or
  (slice, previous, next) ("2.5d", as BiomedParse v2)

A window maps ``[center - width / 2, center + width / 2]`` linearly onto 0-255, clipping outside.
BiomedParse clips to the same bounds but then stretches each image by its own min/max; we map the
fixed bounds, so that one HU value gives one grey value in every image.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
import numpy as np

from boltzformer.io.volumes import MedicalImage

__all__ = [
    "DEFAULT_CT_WINDOW",
    "PERCENTILES",
    "VolumeSlices",
    "WINDOWS",
    "intensity_plan",
    "modality_for_prompt",
    "to_uint8",
    "volume_slices",
    "window_for_prompt",
]

# (center, width) in HU. Where BiomedParse has a site, its bounds (lower, upper) are converted:
# center = (lower + upper) / 2, width = upper - lower. Source: microsoft/BiomedParse
# `inference_utils/processing_utils.py` (v1, CT_WINDOWS; read in its fork TKendel/BiomedParse at
# f870447) and `preprocessing/pre_CT_MR.py` at ca4bbcf (the same values, used to build its training
# data, on which BoltzFormer was trained): abdomen [-150, 250], lung [-1000, 1000], pelvis [-55, 200],
# liver [-25, 230], colon [-68, 187], pancreas [-100, 200].
# The others are standard radiology windows (Radiopaedia, "Windowing (CT)"): brain L40 W80,
# bone L400 W1800, soft tissue L40 W400, mediastinum L50 W350, and the radiologists' lung window
# L-600 W1500 as "lung_radiology" (BiomedParse's lung window is wider: it keeps bone and soft tissue).
WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (50.0, 400.0),
    "lung": (0.0, 2000.0),
    "pelvis": (72.5, 255.0),
    "liver": (102.5, 255.0),
    "colon": (59.5, 255.0),
    "pancreas": (50.0, 300.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "lung_radiology": (-600.0, 1500.0),
}
# CT without a window or a site in the prompt: BiomedParse's default site
DEFAULT_CT_WINDOW = "abdomen"
# MR and other modalities: clip to these percentiles of the non-zero values, then stretch to 0-255
PERCENTILES = (0.5, 99.5)

# Prompt words -> window, most specific first ("liver tumor in abdomen CT" -> liver). BiomedParse's
# CT_sites maps kidney -> abdomen and bladder, cervix, ovary, prostate, uterus -> pelvis.
_PROMPT_SITES: list[tuple[str, str]] = [
    (r"liver|hepat\w*", "liver"),
    (r"pancrea\w*", "pancreas"),
    (r"colon|colorectal|rect(um|al)|sigmoid", "colon"),
    (r"lungs?|pulmonary|nodules?|covid(-19)?|pneumo\w*|bronch\w*|airways?", "lung"),
    (r"mediastin\w*|lymph nodes?", "mediastinum"),
    (r"brain|cerebr\w*|intracranial|hemorrhage|haemorrhage|stroke|head", "brain"),
    (r"bones?|fractures?|vertebra\w*|spine|spinal|ribs?|skeletal|osseous", "bone"),
    (r"bladder|cervix|cervical cancer|ovar(y|ian)|prostate|uter(us|ine)|pelvi[sc]", "pelvis"),
    (r"kidneys?|renal|adrenal|spleen|splenic|stomach|gallbladder|aorta|esophag\w*|oesophag\w*|"
     r"duodenum|abdom\w*|postcava|vena cava", "abdomen"),
    (r"soft tissue|muscles?|neck|breast", "soft_tissue"),
]
_PROMPT_SITES_RE = [(re.compile(rf"\b(?:{p})\b", re.IGNORECASE), site) for p, site in _PROMPT_SITES]
_CT_RE = re.compile(r"\b(ct|cta|computed tomography)\b", re.IGNORECASE)
_MR_RE = re.compile(r"\b(mri?|mr-\w+|mri-\w+|flair|t1|t1w|t1-?gd|t2|t2w|adc|dwi|magnetic resonance)\b", re.IGNORECASE)


def window_for_prompt(prompt: str) -> str | None:
    """The :data:`WINDOWS` name for the body site a prompt names, or ``None`` when it names none.

    Example:
        >>> window_for_prompt("lung nodule in CT scan"), window_for_prompt("liver tumor in abdomen CT")
        ('lung', 'liver')
        >>> window_for_prompt("kidney tumour"), window_for_prompt("polyp") is None
        ('abdomen', True)
    """
    for pattern, site in _PROMPT_SITES_RE:
        if pattern.search(prompt):
            return site
    return None


def modality_for_prompt(prompt: str) -> str | None:
    """``"CT"`` or ``"MR"`` when the prompt names it ("nodule in lung CT", "glioma in brain FLAIR MRI")."""
    if _CT_RE.search(prompt):
        return "CT"
    if _MR_RE.search(prompt):
        return "MR"
    return None


def _resolve_window(window: str | tuple[float, float]) -> tuple[float, float]:
    if isinstance(window, str):
        if window in WINDOWS:
            return WINDOWS[window]
        close = difflib.get_close_matches(window, list(WINDOWS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"window {window!r} is not one of {sorted(WINDOWS)}{hint}; or give (center, width) in HU")
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a name from {sorted(WINDOWS)} or (center, width) in HU, got {window!r}") from None
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise ValueError(f"window (center, width) must be finite with width > 0, got {window!r}")
    return center, width


def _apply_window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    scaled = np.subtract(array, center - width / 2, dtype=np.float32)  # in place below: volumes are large
    scaled /= width  # then * 255: this order keeps exact halves exact (-600 HU in L-600 W1500 -> 127.5)
    scaled *= 255.0
    np.clip(scaled, 0, 255, out=scaled)
    np.nan_to_num(scaled, copy=False, nan=0.0)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def _percentile_stretch(array: np.ndarray) -> np.ndarray:
    """Clip to :data:`PERCENTILES` of the finite non-zero values (zero is the usual MR background;
    BiomedParse takes the values > 0), stretch to 0-255. Constant images give zeros."""
    values = array[np.isfinite(array)]
    nonzero = values[values != 0]
    if nonzero.size:
        values = nonzero
    if values.size == 0:
        return np.zeros(array.shape, np.uint8)
    lower, upper = np.percentile(values, PERCENTILES)
    if upper <= lower:  # e.g. a 0/1 image: every non-zero value is equal; use the full range instead
        finite = array[np.isfinite(array)]
        lower, upper = float(finite.min()), float(finite.max())
    if upper <= lower:
        return np.zeros(array.shape, np.uint8)
    return _apply_window(array, (lower + upper) / 2, upper - lower)


def intensity_plan(
    array: np.ndarray | MedicalImage,
    *,
    modality: str | None = None,
    window: str | tuple[float, float] | None = None,
    prompt: str | None = None,
) -> dict:
    """How :func:`to_uint8` turns these intensities into 0-255, as a JSON-ready dict stated in records.

    ``{"mapping": "as stored" | "window" | "percentiles", "why": ...}``, with ``center`` / ``width`` (HU) for a
    window and ``percentiles`` for a stretch. Values are Hounsfield units, and windowed, only where the
    file says so (a DICOM or NIfTI image whose modality is CT: from the file, the caller or the prompt;
    or a bare array with ``modality="CT"``) or where ``window`` is given. 16-bit and float PNG / TIFF
    files hold grey levels, not HU: they are stretched like MR unless ``window`` is given.
    """
    physical = True
    fmt = None
    if isinstance(array, MedicalImage):
        modality = modality or array.modality
        fmt = array.meta.get("format")
        if fmt is None:  # an image built by hand: its file name says
            name = str(array.path).lower()
            fmt = "nifti" if name.endswith((".nii", ".nii.gz")) else "dicom" if name.endswith((".dcm", ".dicom")) else None
        physical = fmt in ("nifti", "dicom")
        if array.meta.get("source_dtype") == "uint8":
            return {"mapping": "as stored", "why": "8-bit file"}
        dtype = np.dtype(np.float32)
    else:
        dtype = np.asarray(array).dtype
    if dtype == np.uint8:
        return {"mapping": "as stored", "why": "8-bit values"}
    if dtype == bool:
        return {"mapping": "as stored", "why": "binary image: 0 / 255"}
    if window is not None:
        center, width = _resolve_window(window)
        return {"mapping": "window", "center": center, "width": width, "unit": "HU",
                "why": f"window {window if isinstance(window, str) else 'given'}"}
    said = "given"
    if modality is None and prompt:
        modality, said = modality_for_prompt(prompt), "from the prompt"
    if modality is not None and modality.strip().upper() == "CT" and physical:
        site = (window_for_prompt(prompt) if prompt else None) or DEFAULT_CT_WINDOW
        center, width = WINDOWS[site]
        return {"mapping": "window", "center": center, "width": width, "unit": "HU",
                "why": f"CT {fmt or 'values'} ({said}) in HU, window {site}"}
    why = "grey levels of a 16-bit / float image file (not HU; pass a window to treat them as HU)" if not physical else (
        f"{modality or 'unknown modality'}: not CT")
    return {"mapping": "percentiles", "percentiles": list(PERCENTILES), "why": why}


def to_uint8(
    array: np.ndarray | MedicalImage,
    *,
    modality: str | None = None,
    window: str | tuple[float, float] | None = None,
    prompt: str | None = None,
) -> np.ndarray:
    """Intensities -> uint8 of the same shape, the grey values the model sees (:func:`intensity_plan` says how).

    Args:
        array: intensities (2D, RGB or a (D, H, W) volume, one normalisation for the whole array), or a
            :class:`~boltzformer.io.medical.MedicalImage` (its ``modality`` is the default, and an image
            read from an 8-bit file is returned as it is, whatever its modality).
        modality: ``"CT"`` windows the values (Hounsfield units) of a bare array, or of a NIfTI / DICOM
            image; anything else, and 16-bit / float PNG or TIFF files (grey levels, not HU), is stretched
            between the 0.5th and 99.5th percentiles of its non-zero values. ``None``: the image's
            modality, else the one the prompt names ("... CT", "... MRI"), else not CT.
        window: a :data:`WINDOWS` name or ``(center, width)`` in HU; given, the values are windowed
            whatever the modality and the file. ``None`` for CT: the window of the site the prompt names
            (:func:`window_for_prompt`), else :data:`DEFAULT_CT_WINDOW`.
        prompt: the text prompt, to choose the modality and the window as above.

    Returns:
        uint8 array of the input's shape. uint8 input is returned unchanged; NaN maps to 0.

    Raises:
        ValueError: unknown window name (with a suggestion) or a width <= 0.

    Example:
        >>> to_uint8(np.array([-1350.0, -600.0, 0.0, 150.0]), modality="CT", window="lung_radiology").tolist()
        [0, 128, 230, 255]
        >>> to_uint8(np.array([-1000.0, -600.0, 0.0, 1000.0]), prompt="lung nodule in CT scan").tolist()
        [0, 51, 128, 255]
    """
    plan = intensity_plan(array, modality=modality, window=window, prompt=prompt)
    photometric_inverted = False
    if isinstance(array, MedicalImage):
        photometric_inverted = bool(array.meta.get("monochrome1", False))
        array = array.array
    array = np.asarray(array)
    if plan["mapping"] == "as stored":
        if array.dtype == np.uint8:
            return array
        return array.astype(np.uint8) * (255 if array.dtype == bool else 1)
    if plan["mapping"] == "window":
        out = _apply_window(array, plan["center"], plan["width"])
    else:
        out = _percentile_stretch(array)
    # MONOCHROME1 (DICOM): high values are dark; the window keeps the values, the display inverts them
    return 255 - out if photometric_inverted else out


class VolumeSlices(Sequence):
    """The slices of a (D, H, W) uint8 volume as (H, W, 3) uint8 model inputs; see :func:`volume_slices`."""

    def __init__(self, volume: np.ndarray, context: str) -> None:
        self.volume = volume
        self.context = context

    def __len__(self) -> int:
        return self.volume.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        D = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"slice index must be an int, got {type(index).__name__}")
        if not -D <= index < D:
            raise IndexError(f"slice index {index} out of range for a volume of {D} slices")
        d = int(index) % D
        if self.context == "2d" or D == 1:
            channels = (d, d, d)
        else:
            # BiomedParse v2 (src/model/biomedparse_3D.py, forward_eval): RGB = (slice, previous, next),
            # slice 1 stands in for the missing previous of slice 0, slice D-2 for the next of D-1
            channels = (d, d - 1 if d > 0 else 1, d + 1 if d < D - 1 else D - 2)
        return np.stack([self.volume[c] for c in channels], axis=-1)  # (H, W, 3)

    def __iter__(self) -> Iterator[np.ndarray]:
        for d in range(len(self)):
            yield self[d]


def volume_slices(volume_uint8: np.ndarray, *, context: str = "2d") -> VolumeSlices:
    """Model inputs for every slice of a volume, indexable and iterable.

    Args:
        volume_uint8: (D, H, W) uint8, e.g. ``to_uint8(load_image("ct.nii.gz"))``.
        context: ``"2d"``: each slice replicated to 3 channels; ``"2.5d"``: RGB = (slice d, slice d-1,
            slice d+1) as BiomedParse v2, with slice 1 as the previous of slice 0 and slice D-2 as the
            next of slice D-1 (a one-slice volume gets the slice in all three channels).

    Returns:
        a sequence of D arrays (H, W, 3) uint8, built on access.

    Raises:
        ValueError: not a 3D uint8 array, or an unknown ``context``.
    """
    volume = np.asarray(volume_uint8)
    if volume.ndim != 3 or volume.dtype != np.uint8 or volume.shape[0] == 0:
        raise ValueError(
            f"volume_uint8 must be a (D, H, W) uint8 array with D >= 1 (see to_uint8), got shape {volume.shape} {volume.dtype}"
        )
    if context not in ("2d", "2.5d"):
        raise ValueError(f"context must be '2d' or '2.5d', got {context!r}")
    return VolumeSlices(volume, context)
