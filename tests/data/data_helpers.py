"""Helpers of the data tests (imported by name, as tests/evaluate/evaluate_helpers.py): a small dataset
folder of several patients, for patient-disjoint splits and cross-validation folds."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


def patients_folder(root, prompt="a dot", patients=6, per_patient=2, size=8):
    """A dataset folder of ``patients`` x ``per_patient`` tiny images, a square target in each; ids and
    patients start with the folder's name ("a-m0", "a-p0")."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = []
    for i in range(patients * per_patient):
        mask = np.zeros((size, size), np.uint8)
        mask[: 1 + i % 3, : 1 + i % 3] = 255
        Image.fromarray(np.full((size, size, 3), 20 * (i % 10), np.uint8)).save(root / f"images/i{i}.png")
        Image.fromarray(mask).save(root / f"masks/m{i}.png")
        pairs.append({"id": f"{root.name}-m{i}", "image": f"images/i{i}.png", "mask": f"masks/m{i}.png", "prompt": prompt,
                      "patient": f"{root.name}-p{i // per_patient}"})
    (root / "meta.json").write_text(json.dumps({"pairs": pairs}))
    return root
