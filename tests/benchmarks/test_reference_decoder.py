"""The reference code's decoder formulation (benchmarks/reference_decoder.py) against ours: same
weights and sets, same outputs."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import boltzformer
from boltzformer.config import DecoderConfig, config_from_dict, config_to_dict
from boltzformer.model.decoder import BoltzmannDecoder
from boltzformer.model.text import TextFeatures
from boltzformer.model.sampling import AttentionSelection, BoltzmannSampler, inclusion_probability


def _load_reference_module():
    """benchmarks/reference_decoder.py, a script folder's module (not a package's)."""
    spec = importlib.util.spec_from_file_location(
        "reference_decoder", Path(__file__).resolve().parents[2] / "benchmarks" / "reference_decoder.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reference_decoder", module)
    spec.loader.exec_module(module)
    return module


reference_decoder = _load_reference_module()
ReferenceDecoder, ReferenceSampler = reference_decoder.ReferenceDecoder, reference_decoder.ReferenceSampler
reference_keep_mask, use_reference_decoder = reference_decoder.reference_keep_mask, reference_decoder.use_reference_decoder

SIZES = dict(in_channels=24, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=48, num_layers=4, num_queries=5)


def _inputs(B=2, S=64, seed=0):
    """Decoder inputs for an S x S image: maps at strides 32, 16, 8, mask features at stride 4."""
    g = torch.Generator().manual_seed(seed)
    multi_scale = [torch.randn(B, 24, S // s, S // s, generator=g) for s in (32, 16, 8)]
    mask_features = torch.randn(B, 16, S // 4, S // 4, generator=g)
    tokens = torch.randn(B, 6, 32, generator=g)
    padding = torch.zeros(B, 6, dtype=torch.bool)
    padding[1, 4:] = True  # the second prompt is shorter
    return multi_scale, mask_features, TextFeatures(tokens=tokens, padding_mask=padding, pooled=tokens[:, -1])


def _pair(mode="boltzmann", existence=False, seed=0):
    torch.manual_seed(seed)
    ours = BoltzmannDecoder(**SIZES, sampler=BoltzmannSampler(mode=mode, ratio=0.2), existence=existence)
    ref = ReferenceDecoder(**SIZES, sampler=ReferenceSampler(mode=mode, ratio=0.2), existence=existence)
    ref.load_state_dict(ours.state_dict(), strict=True)  # one parameter layout
    return ours, ref


class _Replay(BoltzmannSampler):
    """Returns recorded attended sets; as indices (our sparse path) or as keep masks."""

    def __init__(self, keeps: list[torch.Tensor | None], as_indices: bool) -> None:
        super().__init__()
        self.keeps, self.as_indices = keeps, as_indices

    def forward(self, logits, layer, num_heads, *, generator=None, return_probs=False):
        keep = self.keeps[layer] if layer < len(self.keeps) else None  # the reference's unused last mask
        if keep is None:
            return AttentionSelection(temperature=1.0 / (1 + layer))
        if not self.as_indices:
            return AttentionSelection(keep=keep, temperature=1.0 / (1 + layer))
        # every row's kept tokens, ascending, padded with repeats of its last one (valid False)
        n = int(keep.sum(-1).max())
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :n]
        count = keep.sum(-1, keepdim=True)
        slot = torch.arange(n)
        idx = torch.where(slot < count, order, order.gather(-1, count - 1))
        return AttentionSelection(indices=idx, valid=slot < count, temperature=1.0 / (1 + layer))


def _record(decoder, inputs, seed, **kw):
    return decoder(*inputs, generator=torch.Generator().manual_seed(seed), return_sampling=True, **kw)


def _assert_same_outputs(a, b, atol=2e-5):
    torch.testing.assert_close(a.query_logits, b.query_logits, atol=atol, rtol=1e-4)
    assert len(a.aux_logits) == len(b.aux_logits)
    for x, y in zip(a.aux_logits, b.aux_logits):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)
    if a.existence_logits is not None or b.existence_logits is not None:
        torch.testing.assert_close(a.existence_logits, b.existence_logits, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("direction,size", [("ours_into_reference", 64), ("reference_into_ours", 64),
                                            ("reference_into_ours", 96)])
def test_boltzmann_outputs_equal_with_the_same_sets(direction, size):
    ours, ref = _pair(existence=True)
    inputs = _inputs(S=size)  # 96: levels of 3, 6 and 12 tokens a side
    with torch.no_grad():
        if direction == "ours_into_reference":
            first = _record(ours.eval(), inputs, 3, return_aux=True)
            assert first.sampling[0].keep.sum(-1).min() >= 1
            ref.sampler = _Replay([s.keep for s in first.sampling], as_indices=False)
            second = ref.eval()(*inputs, return_aux=True)
        else:
            first = _record(ref.eval(), inputs, 3, return_aux=True)
            # the reference's sets go through our gather path, as indices
            ours.sampler = _Replay([s.keep for s in first.sampling], as_indices=True)
            second = ours.eval()(*inputs, return_aux=True)
    _assert_same_outputs(first, second)
    assert len(first.aux_logits) == SIZES["num_layers"]


@pytest.mark.parametrize("mode", ["full", "masked"])
def test_deterministic_modes_give_the_same_outputs(mode):
    ours, ref = _pair(mode=mode)
    inputs = _inputs(seed=1)
    with torch.no_grad():
        a = ours.eval()(*inputs, return_aux=True, return_sampling=True)
        b = ref.eval()(*inputs, return_aux=True, return_sampling=True)
    _assert_same_outputs(a, b)
    if mode == "masked":
        # the sets themselves agree (both threshold sigmoid >= 0.5 at the attention resolution)
        for x, y in zip(a.sampling, b.sampling):
            assert (x.keep != y.keep).sum() <= 2  # up to a flip next to sigmoid = 0.5


def test_gradients_equal_with_the_same_sets():
    ours, ref = _pair()
    inputs = _inputs(seed=2)
    weights = torch.linspace(-1, 1, 2 * 5 * 16 * 16).view(2, 5, 16, 16)
    with torch.no_grad():
        keeps = [s.keep for s in _record(ref.eval(), inputs, 4).sampling]
    ours.sampler = _Replay(keeps, as_indices=True)
    ref.sampler = _Replay(keeps, as_indices=False)
    grads = []
    for dec in (ours.train(), ref.train()):
        dec.zero_grad()
        out = dec(*inputs, return_aux=True)
        loss = (out.query_logits * weights).sum() + sum(a.square().mean() for a in out.aux_logits)
        loss.backward()
        grads.append({k: p.grad for k, p in dec.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-3, msg=name)


def test_use_reference_decoder_swaps_the_decoder_and_shares_the_state_dict():
    ref = use_reference_decoder(boltzformer.build_model("tiny", num_layers=3, num_queries=4))
    ours = boltzformer.build_model("tiny", num_layers=3, num_queries=4)
    assert isinstance(ref.decoder, ReferenceDecoder) and isinstance(ref.decoder.sampler, ReferenceSampler)
    assert type(ours.decoder) is BoltzmannDecoder
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        out = ref.eval()(x, ["nodule"], generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (1, 1, 32, 32) and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match="impl must be one of .*'referense'"):
        reference_decoder.build_model("tiny", "referense")


def test_configs_that_record_the_retired_decoder_impl_still_load():
    """Checkpoints and result files written before ``decoder_impl`` left the config record
    ``"efficient"``: they load; ``"reference"`` (never in a released checkpoint) says where it went."""
    data = config_to_dict(DecoderConfig())
    assert "decoder_impl" not in data
    assert config_from_dict(DecoderConfig, {**data, "decoder_impl": "efficient"}) == DecoderConfig()
    with pytest.raises(ValueError, match="decoder_impl='reference' is no longer supported.*benchmarks/reference_decoder.py"):
        config_from_dict(DecoderConfig, {**data, "decoder_impl": "reference"})


def test_reference_keep_mask_includes_each_token_with_one_minus_one_minus_p_to_the_n():
    g = torch.Generator().manual_seed(0)
    N, R, heads = 30, 4000, 2
    logits = torch.randn(1, 1, N, generator=g) * 3
    keep, probs = reference_keep_mask(logits.expand(1, R, N), 0.5, 0.3, heads, generator=g)  # n = 9
    assert keep.shape == probs.shape == (1, heads, R, N)
    expected = inclusion_probability(probs[0, 0, 0].double(), 9)
    freq = keep[0].double().mean(1)  # per head
    z = (freq - expected) / torch.sqrt(expected * (1 - expected) / R)
    assert z.abs().max() < 4.5
    assert not torch.equal(keep[0, 0], keep[0, 1])  # each head its own mask
    # a threshold keeps those tokens always; a row blocking everything attends to everything
    keep, _ = reference_keep_mask(torch.full((1, 2, 10), 8.0), 1.0, 0.1, 1, threshold=0.9, generator=g)
    assert keep.all()


GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "golden"
PREFIX = "sem_seg_head.predictor."


def test_reference_decoder_matches_the_official_code():
    """Fed the masks the official run used, the reference formulation gives its logits."""
    if not (GOLDEN / "weights.safetensors").is_file():
        pytest.skip(f"golden reference files not found at {GOLDEN}")
    safetensors = pytest.importorskip("safetensors.torch")
    weights = safetensors.load_file(str(GOLDEN / "weights.safetensors"))
    shared, case = dict(np.load(GOLDEN / "shared.npz")), dict(np.load(GOLDEN / "case_boltzmann.npz"))
    dec = ReferenceDecoder(in_channels=32, mask_dim=16, hidden_dim=32, num_heads=2, ffn_dim=64, num_layers=3,
                           num_queries=4, sampler=ReferenceSampler())
    dec.load_state_dict({k[len(PREFIX):]: v for k, v in weights.items() if k.startswith(PREFIX)
                         and not k.startswith(PREFIX + "language_encoder.") and k != PREFIX + "class_embed"})
    blocked = []
    for i in range(3):
        shape = tuple(case[f"attn_mask_layer{i}_shape"])
        bits = np.unpackbits(case[f"attn_mask_layer{i}_packbits"], axis=-1, count=shape[-1]).astype(bool)
        blocked.append(torch.from_numpy(bits.reshape(1, 2, 4, -1)))  # rows are b * heads + h
    dec.sampler = _Replay([~b for b in blocked], as_indices=False)
    t = lambda k: torch.from_numpy(shared[k])  # noqa: E731
    tokens = t("grounding_tokens").permute(1, 0, 2)
    text = TextFeatures(tokens=tokens, padding_mask=torch.zeros(tokens.shape[:2], dtype=torch.bool), pooled=tokens[:, -1])
    with torch.no_grad():
        out = dec.eval()([t(f"multi_scale_{i}") for i in range(3)], t("mask_features"), text)
    torch.testing.assert_close(out.query_logits, torch.from_numpy(case["mask_logits_layer2"]), atol=2e-3, rtol=0)
    assert math.isfinite(out.query_logits.abs().max().item())
