"""The ``"msd"`` kind: Medical Segmentation Decathlon / nnU-Net raw (``dataset.json``, ``imagesTr/`` and
``labelsTr/`` NIfTI volumes). Each volume becomes 2D axial slices, one pair per (slice, label) where the
label is present, plus negatives (slices without it, empty mask), grouped by case."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from boltzformer.io.images import DataError
from boltzformer.io.medical import load_image, read_label
from boltzformer.io.windows import DEFAULT_CT_WINDOW, to_uint8, window_for_prompt
from boltzformer.data.importers.common import MSD_FILE, ImportSummary, _check_out, _FolderWriter, _slug, _summary
from boltzformer.data.importers.prompts import biomedparse_prompt


# Sites of the Decathlon tasks and common nnU-Net dataset names, as BiomedParse writes them (organs
# of the abdomen -> "abdomen": "liver tumor in abdomen CT"); the first word of dataset.json's "name",
# then of its "description", found here becomes the prompt's site.
_SITE_WORDS = {
    "brain": "brain", "brats": "brain", "braintumour": "brain", "glioma": "brain", "hippocampus": "brain",
    "heart": "heart", "leftatrium": "heart", "cardiac": "heart",
    "liver": "abdomen", "hepaticvessel": "abdomen", "hepatic": "abdomen", "pancreas": "abdomen",
    "spleen": "abdomen", "kidney": "abdomen", "kits": "abdomen", "abdomen": "abdomen", "abdominal": "abdomen",
    "colon": "colon", "lung": "lung", "prostate": "prostate", "breast": "breast", "chest": "chest",
    "pelvis": "pelvis",
}


@dataclass(frozen=True)
class _MsdLayout:
    labels: dict[str, tuple[int, ...]]  # label name -> voxel values (nnU-Net v2 regions have several)
    channels: dict[int, str]  # channel index -> modality as written in dataset.json
    file_ending: str
    name: str
    description: str


def _read_msd_json(source: Path) -> _MsdLayout:
    path = source / MSD_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: a Medical Segmentation Decathlon / nnU-Net raw dataset needs {MSD_FILE} with "
            f'its "labels" ({{"0": "background", "1": "liver"}} or {{"background": 0, "liver": 1}}) and '
            f'"modality" / "channel_names" ({{"0": "CT"}})'
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    raw = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f'{path} has no "labels" object naming the label values')
    labels: dict[str, tuple[int, ...]] = {}
    for k, v in raw.items():
        if str(k).isdigit() and isinstance(v, str):  # MSD: "1": "liver"
            name, values = v, (int(k),)
        elif isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: "liver": 1
            name, values = str(k), (v,)
        elif isinstance(v, list) and v and all(isinstance(x, int) for x in v):  # nnU-Net v2 region
            name, values = str(k), tuple(v)
        else:
            raise DataError(f'{path} "labels": cannot read entry {k!r}: {v!r} (expected "1": "name" or "name": 1)')
        # nnU-Net v2's "ignore" label marks voxels nobody annotated: no target
        if values != (0,) and name.strip().lower() not in ("background", "ignore"):
            labels[name.strip()] = values
    if not labels:
        raise DataError(f'{path} "labels" names only the background; nothing to segment')
    raw_channels = meta.get("channel_names", meta.get("modality", {}))
    if not isinstance(raw_channels, dict):
        raise DataError(f'{path} "modality" / "channel_names" must map channel to modality, found {raw_channels!r:.80}')
    channels = {int(k): str(v) for k, v in raw_channels.items() if str(k).isdigit()}
    return _MsdLayout(labels, channels, str(meta.get("file_ending", ".nii.gz")), str(meta.get("name", "")),
                      str(meta.get("description", "")))


def _guess_site(layout: _MsdLayout) -> str | None:
    for text in (layout.name, layout.description):
        for word in re.findall(r"[a-z]+", text.lower().replace("_", " ")):
            if word in _SITE_WORDS:
                return _SITE_WORDS[word]
    return None


def _msd_cases(source: Path, ending: str, channel: int) -> list[tuple[str, Path, Path]]:
    """(case id, image file, label file) for every label of ``labelsTr/``, sorted."""
    labels_dir, images_dir = source / "labelsTr", source / "imagesTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise DataError(f"{d} not found: an MSD / nnU-Net raw dataset keeps its volumes in imagesTr/ and labelsTr/")
    cases = []
    for label in sorted(labels_dir.iterdir()):
        if label.name.startswith(".") or not label.name.endswith(ending):  # MSD archives hold "._" AppleDouble files
            continue
        case = label.name[: -len(ending)]
        candidates = [images_dir / f"{case}_{channel:04d}{ending}", images_dir / f"{case}{ending}"]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise DataError(f"label {label} has no image: looked for {' and '.join(str(c) for c in candidates)}")
        cases.append((case, image, label))
    if not cases:
        raise DataError(f"{labels_dir} holds no label volume ending in {ending!r}")
    return cases


def _load_case(image_path: Path, label_path: Path, channel: int | None) -> tuple[Any, np.ndarray]:
    """The case's image (a :class:`~boltzformer.io.medical.MedicalImage`, (D, H, W) axial slices in
    display orientation) and its label volume in the same order, checked to lie on the same grid.

    ``channel``: the channel to take from a file that holds them all (MSD v1 4D), None for a file of one
    channel (nnU-Net v2 ``<case>_<channel:04d>``).
    """
    if channel is None:
        return (image := load_image(image_path)), read_label(label_path, image)
    import nibabel as nib

    try:
        header = nib.load(str(image_path))
    except Exception as e:  # nibabel raises several kinds for unreadable files
        raise DataError(f"image file {image_path} could not be read as NIfTI: {type(e).__name__}: {e}") from e
    n_channels = header.shape[3] if len(header.shape) == 4 else 1
    if not 0 <= channel < n_channels:
        raise DataError(f"{image_path} has {n_channels} channel(s), channel {channel} was asked")
    if n_channels == 1:
        return (image := load_image(image_path)), read_label(label_path, image)
    # load_image reads 3D volumes only: the channel goes through a scratch 3D file, so that its
    # orientation and grid checks are exactly those of every other case
    with tempfile.TemporaryDirectory(prefix="boltzformer-channel-") as scratch:
        one = Path(scratch) / f"{image_path.name.split('.')[0]}_channel{channel}.nii"
        nib.save(header.slicer[..., channel], one)
        image = load_image(one)
    image.path = image_path
    return image, read_label(label_path, image)


def _ct_window(targets: Sequence[str], site: str | None) -> str:
    """The CT window of a dataset: the site its targets and site name ("liver tumor in abdomen CT" -> liver)."""
    return window_for_prompt(" ".join([*targets, "in", site or "", "CT"])) or DEFAULT_CT_WINDOW


def _case_rng(seed: int, case: str, label: str) -> np.random.Generator:
    """A generator that depends on (seed, case, label) only, so that adding a case changes no other case's draws.

    Not ``numpy.random.SeedSequence``: the case and label are strings, which a SeedSequence cannot take
    without hashing them first, and the imported datasets (which negative slices were kept) depend on
    this exact stream; changing it would change every re-import and the results measured on them.
    """
    digest = hashlib.sha256(f"{seed}\x00{case}\x00{label}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _import_msd(
    source: Path, out: Path, *, overwrite: bool, site: str | None, modality: str | None, channel: int,
    slice_step: int, negative_ratio: float, label_names: Mapping[str, str] | None, seed: int,
    window: str | tuple[float, float] | None, made_by: Mapping[str, Any] | None = None,
) -> ImportSummary:
    if not (isinstance(slice_step, int) and slice_step >= 1):
        raise ValueError(f"slice_step must be an integer >= 1, got {slice_step!r}")
    if not (isinstance(channel, int) and channel >= 0):
        raise ValueError(f"channel must be an integer >= 0, got {channel!r}")
    if not (0.0 <= negative_ratio < float("inf")):
        raise ValueError(f"negative_ratio must be a number >= 0, got {negative_ratio!r}")
    if window is not None and not isinstance(window, str):
        try:
            window = (float(window[0]), float(window[1])) if len(window) == 2 else window
        except (TypeError, ValueError):
            raise ValueError(f"window must be a window name or (center, width) in HU, got {window!r}") from None
    if window is not None:
        to_uint8(np.zeros(1, np.float32), window=window)  # a bad window fails now, before any file is read
    layout = _read_msd_json(source)
    label_names = dict(label_names or {})
    unknown = sorted(set(label_names) - set(layout.labels))
    if unknown:
        raise ValueError(f"label_names renames {unknown}, not labels of {source / MSD_FILE} ({sorted(layout.labels)})")
    notes: list[str] = []
    if modality is None:
        if channel not in layout.channels:
            raise DataError(f'{source / MSD_FILE}: no modality for channel {channel} in "modality"/"channel_names" '
                            f"{layout.channels}; pass modality=... (--modality)")
        modality = layout.channels[channel]
    if site is None:
        site = _guess_site(layout)
        notes.append(f"site {site!r} guessed from {MSD_FILE} name/description; pass --site to set it" if site
                     else f"no site found in {MSD_FILE} name/description; prompts name none (pass --site)")
    targets = {name: label_names.get(name, name.replace("_", " ")) for name in layout.labels}
    is_ct = modality.strip().upper() == "CT"
    if window is None and is_ct:
        window = _ct_window(list(targets.values()), site)
    cases = _msd_cases(source, layout.file_ending, channel)
    _check_out(source, out, overwrite)
    with _FolderWriter(out, overwrite, made_by) as w:
        for case, image_path, label_path in cases:
            in_file = None if image_path.name == f"{case}_{channel:04d}{layout.file_ending}" else channel
            image, labels = _load_case(image_path, label_path, in_file)
            pixels = to_uint8(image.array, modality=modality, window=window)  # one scale for the whole case
            written: dict[int, str] = {}
            for name, values in layout.labels.items():
                target = targets[name]
                prompt = biomedparse_prompt(target, modality, site)
                present = np.isin(labels, values)  # (D, H, W)
                per_slice = present.reshape(len(present), -1).sum(1)
                positives = np.flatnonzero(per_slice)[::slice_step]
                absent = np.flatnonzero(per_slice == 0)
                n_neg = min(len(absent), int(np.floor(negative_ratio * len(positives) + 0.5)))
                negatives = np.sort(_case_rng(seed, case, name).choice(absent, size=n_neg, replace=False))
                for z in sorted([*positives.tolist(), *negatives.tolist()]):
                    if z not in written:
                        written[z] = w.write_image(f"{case}_z{z:03d}", pixels[z])
                    fields: dict[str, Any] = {"negative": True} if per_slice[z] == 0 else {}
                    w.add_pair(f"{case}_z{z:03d}__{_slug(name)}", written[z], present[z], prompt, patient=case,
                               slice=int(z), label=name, label_values=list(values), modality=modality,
                               site=site, target=target, **fields)
        w.commit({
            "dataset": layout.name or out.name,
            "description": layout.description or f"imported from {source}",
            "import": {"kind": "msd", "source": str(source), "channel": channel, "slice_step": slice_step,
                       "negative_ratio": negative_ratio, "seed": seed, "cases": len(cases), "window": window},
            "conventions": {
                "image": "8-bit grey PNG of one axial slice, rows anterior -> posterior, columns patient right -> "
                         "left (boltzformer.io.medical); "
                         + (f"CT window {window!r}" if window is not None else "intensities stretched between the "
                            "0.5 and 99.5 percentiles of the case's non-zero voxels"),
                "mask": "8-bit, 0/255: voxels of the label's values in that slice",
                "negative": "true for a slice of the case without the label (empty mask)",
                "patient": "the case id, so that splits keep cases apart",
            },
        })
        return _summary("msd", source, out, w.pairs, notes)
