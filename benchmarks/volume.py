"""Time to segment a CT volume (512 x 512 x 100 by default) from a NIfTI file to a NIfTI mask.

    python benchmarks/volume.py --checkpoint runs/lidc_lgg/last.ckpt --json docs/results/volume_ct.json

Writes a synthetic CT volume (int16 Hounsfield units, 0.7 x 0.7 x 2.5 mm) to a temporary folder,
then runs what ``boltzformer predict --input ct.nii.gz --prompt ... --out DIR`` runs, timing each
stage: reading and windowing, the model over every slice (encoder once per slice, decoder per
prompt), writing the NIfTI mask. Without ``--checkpoint`` the ``tiny`` preset is built with random
weights (the time does not depend on the weights). Prints a table and writes JSON with the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import machine, table, write_json  # noqa: E402

import boltzformer  # noqa: E402
from boltzformer.io.medical import load_image, write_mask  # noqa: E402
from boltzformer.io.windows import to_uint8  # noqa: E402
from boltzformer.predict.files import segment_volume  # noqa: E402


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """(X, Y, Z) int16 HU: air outside a body ellipse, soft tissue, two lungs, a few nodules."""
    X, Y, Z = shape
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, X), np.linspace(-1, 1, Y), indexing="ij")
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    lungs = (((x - 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 < 1) | (((x + 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 < 1)
    vol = np.full(shape, -1000, dtype=np.int16)
    vol[body] = 40
    vol[lungs] = -850
    for _ in range(6):
        cx, cy, cz, r = rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), rng.integers(0, Z), rng.uniform(0.02, 0.05)
        blob = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        for z in range(max(0, cz - 3), min(Z, cz + 4)):
            vol[..., z][blob & lungs] = 30
    return (vol + rng.normal(0, 15, shape)).astype(np.int16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--shape", default="512,512,100", help="X,Y,Z voxels")
    p.add_argument("--prompt", action="append", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context", default="2d", choices=["2d", "2.5d"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import nibabel as nib

    shape = tuple(int(v) for v in args.shape.split(","))
    prompts = args.prompt or ["lung nodule in CT scan"]
    model = boltzformer.load_checkpoint(args.checkpoint) if args.checkpoint else boltzformer.build_model("tiny")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ct.nii.gz"
        affine = np.diag([-0.7, -0.7, 2.5, 1.0])
        nib.save(nib.Nifti1Image(synthetic_ct(shape), affine), src)
        t0 = time.perf_counter()
        image = load_image(src)
        display = to_uint8(image, prompt=prompts[0])
        t1 = time.perf_counter()
        results = segment_volume(model, display, prompts, context=args.context, batch_size=args.batch_size)
        t2 = time.perf_counter()
        for k, r in enumerate(results):
            write_mask(r.mask, image, Path(tmp) / f"mask{k}.nii.gz")
        t3 = time.perf_counter()
    slices = display.shape[0]
    row = {
        "volume": "x".join(map(str, shape)),
        "model": model.config.preset,
        "input": model.config.image_size,
        "prompts": len(prompts),
        "context": args.context,
        "read + window (s)": t1 - t0,
        "model (s)": t2 - t1,
        "per slice (s)": (t2 - t1) / slices,
        "write (s)": t3 - t2,
        "total (s)": t3 - t0,
    }
    print(table([row], list(row)))
    if args.json:
        write_json({"machine": machine(), "checkpoint": args.checkpoint, "batch_size": args.batch_size, "result": row}, args.json)


if __name__ == "__main__":
    main()
