"""Tests of boltzformer.evaluate.runner: a model over a dataset, K sampled passes, the existence gate, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from boltzformer.evaluate import dice_per_sample, pairwise_agreement, predict_passes


@pytest.fixture(scope="module")
def tiny():
    import boltzformer

    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4).eval()
    return model


@pytest.fixture(scope="module")
def synthetic():
    from boltzformer.data.synthetic import SyntheticConfig, SyntheticDataset

    return SyntheticDataset("test", SyntheticConfig(image_size=64, seed=0))


def test_predict_passes_are_the_single_passes_with_seeds_seed_to_seed_plus_k(tiny, synthetic):
    from boltzformer.predict.engine import predict_probabilities

    items = [synthetic[i] for i in range(3)]
    images, prompts = [s["image"] for s in items], [s["prompt"] for s in items]
    gens = [torch.Generator().manual_seed(5 + k) for k in range(3)]
    passes, existence = predict_passes(tiny, images, prompts, image_size=64, generators=gens)
    assert [p.shape for p in passes] == [(3, 64, 64)] * 3 and existence is None
    for k in range(3):
        single = predict_probabilities(tiny, images, prompts, image_size=64, generator=torch.Generator().manual_seed(5 + k))
        for p, s in zip(passes, single):
            assert torch.equal(p[k], s)
    assert not torch.equal(passes[0][0], passes[0][1])  # other seeds draw other attention sets


@pytest.mark.slow
def test_evaluate_model_with_k_samples_is_reproducible_and_records_agreement(tiny, synthetic):
    from boltzformer.evaluate import evaluate_model

    a = evaluate_model(tiny, synthetic, batch_size=2, seed=7, samples=3, limit=4)
    b = evaluate_model(tiny, synthetic, batch_size=2, seed=7, samples=3, limit=4)
    assert json.dumps(a) == json.dumps(b)  # bit-identical
    assert a["sampling_passes"] == 3 and a["pass_seeds"] == [7, 8, 9] and a["seed"] == 7
    assert all(0.0 <= s["agreement"] <= 1.0 for s in a["samples"])
    assert a["uncertainty"]["agreement"]["n"] == 4 and "lesion_detection" in a and "boundary" in a
    # every predicted lesion is scored by the mean probability map, so the report has its FROC
    found = [x for s in a["samples"] for x in s["pred_lesions"]]
    assert found and all(0.5 < x["score"] <= 1.0 for x in found)
    assert a["lesion_detection"]["froc"]["sensitivity"][-1] <= a["lesion_detection"]["sensitivity"]
    # the scored mask is the mean of the passes; the agreement is that of their thresholded masks
    items = [synthetic[i] for i in range(2)]
    gens = [torch.Generator().manual_seed(7 + k) for k in range(3)]
    probs, _ = predict_passes(tiny, [s["image"] for s in items], [s["prompt"] for s in items], image_size=64, generators=gens)
    for s, p, rec in zip(items, probs, a["samples"]):
        dice = dice_per_sample((p.mean(0) > 0.5)[None, None], (s["mask"] >= 0.5)[None]).item()
        mean = p.mean(0)
        assert rec["dice"] == dice and rec["agreement"] == pairwise_agreement(p > 0.5)
        assert rec["mask_probability"] == (float(mean[mean > 0.5].mean()) if (mean > 0.5).any() else None)
    # one pass: as before (a generator seeded `seed` over the batches), no agreement
    one = evaluate_model(tiny, synthetic, batch_size=2, seed=7, limit=4)
    assert one["uncertainty"]["agreement"] is None and one["sampling_passes"] == 1
    assert all(s["agreement"] is None for s in one["samples"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"samples": 0}, r"samples must be an integer >= 1"),
        ({"samples": 2.0}, "samples must be an integer"),
        ({"batch_size": 0}, "batch_size"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"lesion_iou": -0.1}, "lesion_iou"),
        ({"nsd_tolerance": -1}, "nsd_tolerance"),
        ({"limit": 0}, "empty"),
    ],
)
def test_evaluate_model_rejects(tiny, synthetic, kwargs, match):
    from boltzformer.evaluate import evaluate_model

    with pytest.raises(ValueError, match=match):
        evaluate_model(tiny, synthetic, **kwargs)


def test_cli_evaluate_with_samples(tiny, tmp_path, capsys):
    import boltzformer
    from boltzformer.cli import main

    ckpt = boltzformer.save_checkpoint(tiny, tmp_path / "m.ckpt")
    out = tmp_path / "r.json"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--data", "synthetic", "--out", str(out), "--limit", "3"]
    assert main([*argv, "--samples", "2", "--lesion-iou", "0.25", "--nsd-tolerance", "1.5"]) == 0
    report = json.loads(out.read_text())
    assert report["sampling_passes"] == 2 and report["uncertainty"]["agreement"]["n"] == 3
    assert report["lesion_detection"]["match"] == "IoU > 0.25" and report["boundary"]["nsd_tolerance"] == 1.5
    assert "### Agreement of 2 sampled passes" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    assert main([*argv, "--samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "--samples must be >= 1" in err and len(err.strip().splitlines()) == 1


def test_evaluate_model_gates_masks_with_an_existence_head(synthetic):
    import boltzformer
    from boltzformer.evaluate import evaluate_model

    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", image_size=64, num_layers=3, num_queries=4, existence=True).eval()
    with torch.no_grad():
        model.decoder.existence.classifier.weight.zero_()
        model.decoder.existence.classifier.bias.fill_(30.0)  # "present" everywhere: no gating
    present = evaluate_model(model, synthetic, batch_size=2, seed=1, samples=2, limit=2)
    with torch.no_grad():
        model.decoder.existence.classifier.bias.fill_(-30.0)  # "absent" everywhere: every mask empty
    absent = evaluate_model(model, synthetic, batch_size=2, seed=1, samples=2, limit=2)
    assert present["existence_threshold"] == 0.5
    assert any(s["pred_area_fraction"] > 0 for s in present["samples"])  # the random model paints something
    assert all(s["pred_area_fraction"] == 0 and s["dice"] == 0 for s in absent["samples"])
    assert all(s["mask_probability"] is None for s in absent["samples"]) and absent["uncertainty"]["mask_probability"] is None
    assert absent["boundary"]["hd95_missing"]["empty_prediction"] == 2
    # the agreement is that of the passes' own masks, as Predictor.predict_samples reports it
    assert [s["agreement"] for s in absent["samples"]] == [s["agreement"] for s in present["samples"]]
