"""Helpers of the importer tests (imported by name, as tests/evaluate/evaluate_helpers.py): tiny BiomedParse and
MSD / nnU-Net sources built in tmp_path, and readers of what an import wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from tests.files import png


def _meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def _mask(out: Path, pair: dict) -> np.ndarray:
    return np.asarray(Image.open(out / pair["mask"]))


def _make_biomedparse(root: Path) -> dict[str, np.ndarray]:
    """train/ + train_mask/ and test/ + test_mask/; returns the expected bool mask of every mask file."""
    rng = np.random.default_rng(0)
    expected = {}

    def mask(name: str, box, *, encoding: str, split: str = "train", size=(24, 32)) -> None:
        m = np.zeros(size, bool)
        if box:
            m[box[0] : box[1], box[2] : box[3]] = True
        if encoding == "01":  # 0/1 grey: BiomedParse's rule is pixel != 0
            arr = m.astype(np.uint8)
        elif encoding == "rgba":  # RGBA, alpha 255 everywhere (as the BiomedParse demo masks)
            arr = np.zeros((*size, 4), np.uint8)
            arr[..., :3] = m[..., None] * 255
            arr[..., 3] = 255
        else:
            arr = m.astype(np.uint8) * 255
        png(root / f"{split}_mask" / name, arr)
        expected[f"{split}/{name}"] = m

    png(root / "train" / "0001_CT_abdomen.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    png(root / "train" / "0002_MRI-FLAIR_brain.png", rng.integers(0, 255, (24, 32), dtype=np.uint8))
    png(root / "train" / "0003_X-Ray_chest.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    png(root / "train" / "0004_CT_lung.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))  # no mask
    png(root / "test" / "0001_pathology_liver.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    mask("0001_CT_abdomen_liver.png", (2, 12, 3, 20), encoding="255")
    mask("0001_CT_abdomen_kidney+cyst.png", (15, 17, 25, 27), encoding="01")
    mask("0002_MRI-FLAIR_brain_lower-grade+glioma.png", (5, 9, 5, 8), encoding="rgba")
    mask("0003_X-Ray_chest_left+lung.png", None, encoding="255")  # empty: a negative
    mask("0001_pathology_liver_neoplastic+cells.png", (0, 3, 0, 3), encoding="255", split="test")
    return expected


SHAPE = (32, 32, 8)  # (X, Y, Z) voxels; Z is axial
AFFINE = np.diag([0.8, 0.7, 2.5, 1.0])  # RAS+ already


def _display(volume_xyz: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z as shown: rows anterior -> posterior, columns patient right -> left."""
    return volume_xyz[:, :, z].T[::-1, ::-1]


def _make_msd(root: Path, *, v2: bool = False, channels: int = 1) -> dict[str, np.ndarray]:
    """3 cases of 32x32x8, labels 1 (a box in slices 1-5 or 2-5) and 2 (slices 3-4; absent from case 2)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    labels = {}
    for c in range(3):
        case = f"liver_{c}"
        image = rng.normal(40, 80, SHAPE + ((channels,) if channels > 1 else ())).astype(np.float32)
        lab = np.zeros(SHAPE, np.uint8)
        lab[4:14, 6:20, 1 + c % 2 : 6] = 1
        if c < 2:
            lab[20:23, 8:12, 3:5] = 2
        if v2:
            for ch in range(channels):
                data = image[..., ch] if channels > 1 else image
                nib.save(nib.Nifti1Image(data, AFFINE), root / "imagesTr" / f"{case}_{ch:04d}.nii.gz")
        else:
            nib.save(nib.Nifti1Image(image, AFFINE), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), root / "labelsTr" / f"{case}.nii.gz")
        labels[case] = lab
    (root / "labelsTr" / "._liver_0.nii.gz").write_bytes(b"AppleDouble")  # as in the MSD archives
    if v2:
        meta = {"channel_names": {"0": "CT", "1": "MRI"}, "labels": {"background": 0, "liver": 1, "tumor": 2, "any": [1, 2], "ignore": 3},
                "file_ending": ".nii.gz", "name": "Dataset003_Liver"}
    else:
        meta = {"name": "Liver", "description": "Liver and tumour segmentation", "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "liver", "2": "cancer"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return labels


def _expected_counts(labels: dict[str, np.ndarray], values: tuple[int, ...], ratio: float = 0.25) -> tuple[int, int]:
    pos = neg = 0
    for lab in labels.values():
        n = int(np.isin(lab, values).any(axis=(0, 1)).sum())
        pos += n
        neg += min(SHAPE[2] - n, math.floor(ratio * n + 0.5))
    return pos, neg

