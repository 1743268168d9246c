"""The learning-rate schedule (PyTorch's LinearLR + CosineAnnealingLR in a SequentialLR) gives the rates of
the hand-written warm-up + cosine ``LambdaLR`` it replaced, step for step; old checkpoints resume."""

import math

import pytest
import torch

pytest.importorskip("lightning")

from boltzformer.config import TrainConfig, get_preset  # noqa: E402
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
