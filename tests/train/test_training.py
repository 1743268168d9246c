"""Training: the loss, overfitting a few images, two-process CPU DDP."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import boltzformer
from boltzformer.data.synthetic import SyntheticConfig, SyntheticDataset
from boltzformer.train.module import SegmentationLoss


def test_loss_is_dice_plus_bce_on_the_resized_prediction():
    loss = SegmentationLoss()
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:8, 4:8] = 1
    perfect = (target * 2 - 1) * 50  # logits at half resolution: resized to the target
    assert loss(perfect[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2), target) < 0.01
    wrong = -perfect
    assert loss(wrong, target) > 1.5
    # squared denominators: Dice term of p = 0.5 everywhere is 1 - 2*0.5*16 / (0.25*256 + 16)
    half = torch.zeros(1, 1, 16, 16)
    dice_term = 1 - (2 * 0.5 * 16 + 1e-5) / (0.25 * 256 + 16 + 1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(half, target[:1])
    assert loss(half, target[:1]).item() == pytest.approx(dice_term + bce.item(), rel=1e-5)


@pytest.mark.slow
def test_a_tiny_model_overfits_four_images():
    torch.manual_seed(0)
    ds = SyntheticDataset("train", SyntheticConfig(image_size=64, n_train=4))
    batch = [ds[i] for i in range(4)]
    images = torch.stack([b["image"] for b in batch])
    masks = torch.stack([b["mask"] for b in batch])
    prompts = [b["prompt"] for b in batch]
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4, attention="full")
    loss_fn = SegmentationLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(120):
        loss = loss_fn(model(images, prompts).logits, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < losses[0] / 4, (losses[0], losses[-5:])


@pytest.mark.slow
def test_two_process_cpu_ddp(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "boltzformer.cli", "train", "--data", "synthetic", "--out", str(out), "--devices", "2",
           "--accelerator", "cpu", "--max-steps", "2", "--batch-size", "2", "--val-every", "2", "--val-batches", "1",
           "--image-size", "64", "--set", "num_layers=3", "--quiet"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert boltzformer.load_checkpoint(out / "last.ckpt").config.image_size == 64


@pytest.mark.slow
def test_bf16_precision_trains(tmp_path):
    from boltzformer.cli import main

    argv = ["train", "--data", "synthetic", "--out", str(tmp_path / "bf16"), "--precision", "bf16", "--max-steps", "1",
            "--batch-size", "2", "--val-every", "1", "--val-batches", "1", "--image-size", "64", "--set", "num_layers=3", "--quiet"]
    assert main(argv) == 0
    ckpt = torch.load(tmp_path / "bf16" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_frozen_parts_keep_their_weights_and_the_rest_trains(tmp_path):
    from boltzformer.cli import main

    out = tmp_path / "frozen"
    argv = ["train", "--data", "synthetic", "--out", str(out), "--max-steps", "2", "--batch-size", "2",
            "--val-every", "2", "--val-batches", "1", "--image-size", "64", "--set", "num_layers=3", "--quiet",
            "--freeze", "backbone", "--freeze", "text_encoder", "--seed", "3"]
    assert main(argv) == 0
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["train_config"]["freeze"] in (["backbone", "text_encoder"], ("backbone", "text_encoder"))
    # the same seed builds the same initial weights: frozen parts are unchanged, the others moved
    from boltzformer.config import TrainConfig
    from boltzformer.train.module import BoltzFormerModule

    import lightning as L

    L.seed_everything(3, verbose=False)
    init = BoltzFormerModule(ckpt["hyper_parameters"]["model_config"], ckpt["hyper_parameters"]["train_config"])
    start = {f"model.{k}": v for k, v in init.model.state_dict().items()}
    trained = ckpt["state_dict"]
    for part, frozen in (("backbone", True), ("text_encoder", True), ("pixel_decoder", False), ("decoder", False)):
        keys = [k for k in trained if k.startswith(f"model.{part}.") and trained[k].is_floating_point()]
        assert keys, part
        same = all(torch.equal(trained[k], start[k]) for k in keys)
        assert same == frozen, (part, frozen)
    # the optimiser holds the trainable parameters only
    n_trainable = sum(not n.startswith(("backbone.", "text_encoder.")) for n, _ in init.model.named_parameters())
    assert sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"]) == n_trainable
    with pytest.raises(ValueError, match="freeze: unknown part"):
        TrainConfig(freeze=("decoder",))


def test_frozen_parts_stay_in_eval_mode():
    from boltzformer.config import TrainConfig, config_to_dict, get_preset
    from boltzformer.train.module import BoltzFormerModule

    module = BoltzFormerModule(config_to_dict(get_preset("tiny", image_size=64, num_layers=3)),
                               config_to_dict(TrainConfig(freeze=("backbone",))))
    assert not module.model.backbone.training  # from the start: Lightning may never call train()
    torch.nn.Module.train(module)  # as a mode restore that bypasses the module's train() would
    module.on_train_batch_start(None, 0)
    assert not module.model.backbone.training and module.model.decoder.training
    module.train()
    assert not module.model.backbone.training and module.model.decoder.training
    assert not any(p.requires_grad for p in module.model.backbone.parameters())
    assert all(p.requires_grad for p in module.model.decoder.parameters())


def test_cli_freeze_choices_equal_the_config():
    from boltzformer.cli import commands as cli
    from boltzformer.config import FREEZABLE_PARTS

    assert tuple(cli._FREEZABLE) == FREEZABLE_PARTS


def test_cli_loss_choices_equal_the_config():
    from boltzformer.cli import train as cli
    from boltzformer.config import LOSSES

    assert tuple(cli._LOSSES) == LOSSES


def _folder(root, n=8, size=128):
    """n images (size x size) with a 3 x 3 bright dot each, two images per patient."""
    import json

    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        y, x = rng.integers(0, size - 3, 2)
        mask = np.zeros((size, size), np.uint8)
        mask[y : y + 3, x : x + 3] = 255
        image = np.stack([mask // 2 + 30] * 3, -1).astype(np.uint8)
        Image.fromarray(image).save(root / f"images/i{i}.png")
        Image.fromarray(mask).save(root / f"masks/m{i}.png")
        pairs.append({"id": f"m{i}", "image": f"images/i{i}.png", "mask": f"masks/m{i}.png", "prompt": "a dot", "patient": f"p{i // 2}"})
    (root / "meta.json").write_text(json.dumps({"pairs": pairs}))
    return root


@pytest.mark.slow
def test_native_patches_with_a_cached_frozen_encoder(tmp_path):
    """--patch-overlap trains on native patches; --feature-cache encodes each patch once and the model
    flips features; evaluation slides the same window over the native image."""
    import json

    from boltzformer.cli import main

    data, out, cache = _folder(tmp_path / "data"), tmp_path / "run", tmp_path / "cache"
    argv = ["train", "--data", str(data), "--out", str(out), "--max-steps", "3", "--batch-size", "2", "--val-every", "3",
            "--image-size", "64", "--set", "num_layers=3", "--quiet", "--patch-overlap", "0.5", "--freeze", "backbone",
            "--feature-cache", str(cache)]
    unfrozen = [a for a in argv if a not in ("--freeze", "backbone")]
    unfrozen[unfrozen.index(str(out))] = str(tmp_path / "bad")
    assert main(unfrozen) == 2  # a cache needs a frozen backbone
    assert main(argv) == 0
    tc = json.loads((out / "config.json").read_text())["train"]
    assert tc["patch_overlap"] == 0.5 and tc["feature_flips"] is True
    entries = list(cache.rglob("*.pt"))
    # 64-px patches of 128-px images lie on a 3 x 3 grid: at most 9 distinct patches per image, and the
    # steps' 6 patches plus validation's reuse what is there
    assert 1 <= len(entries) <= 6 + 2
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(out / "last.ckpt"), "--data", str(data), "--out", str(report),
                 "--window-overlap", "0.5"]) == 0
    result = json.loads(report.read_text())
    assert result["window_overlap"] == 0.5 and result["n"] >= 1
    assert main(["evaluate", "--checkpoint", str(out / "last.ckpt"), "--data", str(data), "--out", str(report),
                 "--window-overlap", "1.5"]) == 2


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_asked_step_with_its_whole_metrics_history(tmp_path):
    """SIGKILL after the first time-based checkpoint, then --resume: the run ends at --max-steps and
    logs/metrics.csv holds every logged step once, the killed part included."""
    import csv
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "boltzformer.cli", "train", "--data", "synthetic", "--out", str(out), "--max-steps", "40",
            "--batch-size", "1", "--val-every", "40", "--val-batches", "1", "--image-size", "64", "--set", "num_layers=2",
            "--set", "num_queries=2", "--set", "hidden_dim=32", "--checkpoint-every-min", "0.002", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # kill at some point after the first checkpoint, mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last.ckpt").exists(), proc.stderr.read().decode()[-2000:]
    killed_at = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 0 < killed_at < 40, "the run must be killed mid-way for this test to mean something"
    done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 40
    with open(out / "logs" / "metrics.csv", newline="") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == [9, 19, 29, 39]  # log_every_n_steps = 10: each once, before and after the kill
