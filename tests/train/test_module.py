"""boltzformer.train.module: the learning-rate schedule (PyTorch's LinearLR + CosineAnnealingLR in a
SequentialLR) gives the rates of the hand-written warm-up + cosine ``LambdaLR`` it replaced, step for step,
and old checkpoints resume; ``val/dice`` (which chooses ``best.ckpt``) is the report's Dice of the mask the
evaluator scores. The loss and training runs: test_training.py."""

import math

import pytest
import torch

pytest.importorskip("lightning")

from boltzformer.config import TrainConfig, get_preset  # noqa: E402
from boltzformer.evaluate.metrics import dice_per_sample  # noqa: E402
from boltzformer.train.module import BoltzFormerModule, warmup_cosine_schedule  # noqa: E402


def _lambda_lr(warmup_steps: int, max_steps: int):
    """The schedule as it was hand-written (a LambdaLR factor)."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def _rates(make, steps: int, lr: float = 1e-3) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0.0}], lr=lr)
    sched = make(opt)
    rates = []
    for _ in range(steps):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("warmup_steps,max_steps", [(50, 400), (1, 10), (0, 20), (5, 5), (10, 7), (3, 100)])
def test_schedule_matches_the_hand_written_lambda_step_for_step(warmup_steps, max_steps):
    new = _rates(lambda o: warmup_cosine_schedule(o, warmup_steps=warmup_steps, max_steps=max_steps), max_steps)
    old = _rates(lambda o: torch.optim.lr_scheduler.LambdaLR(o, _lambda_lr(warmup_steps, max_steps)), max_steps)
    assert len(new) == max_steps
    for step, (a, b) in enumerate(zip(new, old)):
        assert a == pytest.approx(b, rel=1e-12, abs=0.0), f"step {step}"


@pytest.mark.parametrize("kwargs,name", [({"warmup_steps": -1, "max_steps": 10}, "warmup_steps"), ({"warmup_steps": 1, "max_steps": 0}, "max_steps")])
def test_schedule_rejects_bad_steps_naming_the_argument(kwargs, name):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match=name):
        warmup_cosine_schedule(opt, **kwargs)


def test_a_checkpoint_with_the_old_lambda_state_gets_the_new_state_at_the_same_step():
    tc = TrainConfig(max_steps=30, warmup_steps=5)
    module = BoltzFormerModule.create(get_preset("tiny"), tc)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr)
    old = torch.optim.lr_scheduler.LambdaLR(opt, _lambda_lr(tc.warmup_steps, tc.max_steps))
    for _ in range(12):
        opt.step()
        old.step()
    checkpoint = {"lr_schedulers": [old.state_dict()]}
    module.on_load_checkpoint(checkpoint)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr)
    new = warmup_cosine_schedule(opt2, warmup_steps=tc.warmup_steps, max_steps=tc.max_steps)
    new.load_state_dict(checkpoint["lr_schedulers"][0])
    opt2.load_state_dict(opt.state_dict())  # a resume restores the optimiser too (its groups' rates)
    assert new.last_epoch == 12
    assert new.get_last_lr()[0] == pytest.approx(old.get_last_lr()[0], rel=1e-12)
    opt2.step()
    new.step()
    opt.step()
    old.step()
    assert new.get_last_lr()[0] == pytest.approx(old.get_last_lr()[0], rel=1e-12)


def _val_dice(module, batch):
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)  # noqa: E731 (no trainer)
    torch.manual_seed(1)  # the sampled attention draws from torch's global generator
    with torch.no_grad():
        module.validation_step(batch, 0)
    return logged["val/dice"]


@pytest.mark.parametrize("existence", [False, True])
def test_val_dice_is_the_reports_dice_of_the_scored_mask(existence):
    torch.manual_seed(0)
    module = BoltzFormerModule.create(get_preset("tiny", image_size=64, num_layers=2, num_queries=4, existence=existence),
                                      TrainConfig()).eval()
    mask = torch.zeros(3, 1, 64, 64)
    mask[0, 0, 10:20, 10:20] = 1
    mask[1, 0, 30:34, 40:50] = 1  # image 2: an empty target
    batch = {"image": torch.rand(3, 3, 64, 64) * 255, "mask": mask, "prompt": ["nodule", "cyst", "lesion"],
             "present": (mask.flatten(1).amax(1) > 0).float()}
    torch.manual_seed(1)
    with torch.no_grad():
        out = module.model(batch["image"], batch["prompt"])
    logits = torch.nn.functional.interpolate(out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    pred = logits > 0
    if existence:
        pred &= (torch.sigmoid(out.existence_logits) >= 0.5).view(3, 1, 1, 1)
    expected = dice_per_sample(pred, mask >= 0.5).mean()
    assert _val_dice(module, batch) == pytest.approx(float(expected), abs=1e-6)
    if existence:  # the existence head says "absent" everywhere: every mask empty, Dice 1 on the empty target only
        with torch.no_grad():
            module.model.decoder.existence.classifier.weight.zero_()
            module.model.decoder.existence.classifier.bias.fill_(-30.0)
        assert _val_dice(module, batch) == pytest.approx(1 / 3)


@pytest.mark.parametrize("kind", ["dice_ce", "dice_focal", "tversky_ce"])
def test_every_loss_is_near_zero_for_a_confident_right_answer_and_large_for_a_wrong_one(kind):
    from boltzformer.train.module import SegmentationLoss

    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:8, 4:8] = 1
    loss = SegmentationLoss(kind)
    right = loss(20 * (2 * target - 1), target)
    wrong = loss(-20 * (2 * target - 1), target)
    assert float(right) < 0.01 and float(wrong) > 0.9
    # logits at another size are resized to the target's
    assert torch.isclose(loss(20 * (2 * target[..., ::2, ::2] - 1), target), right, atol=0.05)


def test_tversky_weighs_a_missed_target_pixel_more_than_a_false_one():
    from monai.losses import TverskyLoss

    from boltzformer.train.module import SegmentationLoss

    target = torch.zeros(1, 1, 10, 10)
    target[..., :5, :] = 1  # 50 target pixels
    missed = target.clone()
    missed[..., :1, :] = 0  # 10 target pixels missed
    extra = target.clone()
    extra[..., 5:6, :] = 1  # 10 false pixels
    tversky = TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)
    assert float(tversky(40 * missed - 20, target)) > float(tversky(40 * extra - 20, target))
    assert isinstance(SegmentationLoss("tversky_ce").loss.tversky, TverskyLoss)


def test_an_unknown_loss_names_the_choices():
    from boltzformer.config import TrainConfig

    with pytest.raises(ValueError, match="dice_focal"):
        TrainConfig(loss="focal")
