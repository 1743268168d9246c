"""Shapes through every module, text handling, reproducibility, resolution-independence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import boltzformer
from boltzformer.model.backbones import TinyBackbone
from boltzformer.model.pigma import PiGMA
from boltzformer.model.pixel_decoder import PixelDecoder
from boltzformer.model.text import BuiltinTextEncoder, HashTokenizer

SMALL = dict(num_layers=3, num_queries=4)


def _images(B, S=128, seed=0):
    return torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(seed)) * 255


def test_backbone_strides_and_channels():
    net = TinyBackbone(channels=(8, 16, 24, 32), depths=(1, 1, 1, 1))
    out = net(torch.randn(2, 3, 96, 160))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 8, 24, 40), "res3": (2, 16, 12, 20), "res4": (2, 24, 6, 10), "res5": (2, 32, 3, 5),
    }


def test_pixel_decoder_shapes():
    pd = PixelDecoder(in_channels=(8, 16, 24, 32), conv_dim=32, mask_dim=16, encoder_layers=1, encoder_heads=2,
                      encoder_ffn_dim=64, norm_groups=8)
    feats = TinyBackbone(channels=(8, 16, 24, 32), depths=(1, 1, 1, 1))(torch.randn(2, 3, 128, 96))
    out = pd(feats)
    assert out.mask_features.shape == (2, 16, 32, 24)
    assert [tuple(m.shape) for m in out.multi_scale] == [(2, 32, 4, 3), (2, 32, 8, 6), (2, 32, 16, 12)]


def test_text_encoder_shapes_padding_and_pooling():
    enc = BuiltinTextEncoder(out_dim=24, vocab_size=512, context_length=16, width=32, layers=1, heads=2)
    t = enc(["nodule", "a large irregular lesion in the scan"], torch.device("cpu"))
    L = len(enc.tokenizer.encode("a large irregular lesion in the scan"))
    assert t.tokens.shape == (2, L, 24) and t.pooled.shape == (2, 24)
    assert t.padding_mask.tolist()[0] == [False] * 3 + [True] * (L - 3)
    assert not t.padding_mask[1].any()
    # causal: the short prompt's real tokens do not depend on the batch it is in
    alone = enc(["nodule"], torch.device("cpu"))
    torch.testing.assert_close(t.tokens[0, :3], alone.tokens[0], atol=1e-5, rtol=1e-5)


def test_hash_tokenizer_is_stable_and_truncates():
    tok = HashTokenizer(vocab_size=8192, context_length=6)
    assert tok.encode("Lung Nodule") == tok.encode("lung nodule")
    import zlib

    assert tok.encode("lung nodule") == [1] + [3 + zlib.crc32(w.encode()) % 8189 for w in ("lung", "nodule")] + [2]
    ids = tok.encode("one two three four five six seven")
    assert len(ids) == 6 and ids[0] == tok.BOS and ids[-1] == tok.EOS
    assert tok.encode("nodule") != tok.encode("cyst")


@pytest.mark.parametrize("size", [96, 128, 192])
def test_model_output_shapes_follow_the_input_size(size):
    model = boltzformer.build_model("tiny", **SMALL).eval()
    out = model(_images(2, size), ["nodule", "cyst"], return_aux=True, return_sampling=True)
    assert out.logits.shape == (2, 1, size // 2, size // 2)  # PiGMA at H/2
    assert out.query_logits.shape == (2, 4, size // 4, size // 4)
    assert len(out.aux_logits) == 3 and out.aux_logits[0].shape == (2, 1, size // 4, size // 4)
    assert [s.size for s in out.sampling] == [(size // 32,) * 2, (size // 16,) * 2, (size // 8,) * 2]
    assert out.sampling[0].keep.shape == (2, 4, 4, (size // 32) ** 2)
    assert out.sampling[0].probs.shape == out.sampling[0].keep.shape
    assert [s.temperature for s in out.sampling] == pytest.approx([1.0, 0.5, 1 / 3])


def test_pigma_follows_input_size():
    pigma = PiGMA(num_queries=3)
    out = pigma(torch.randn(1, 3, 20, 24), torch.randn(1, 3, 80, 96))
    assert out.shape == (1, 1, 40, 48)


def test_without_pigma_logits_are_the_query_mean():
    model = boltzformer.build_model("tiny", pigma=False, **SMALL).eval()
    out = model(_images(1), ["nodule"], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.logits, out.query_logits.mean(1, keepdim=True))


@pytest.mark.parametrize("attention", ["full", "masked"])
def test_batched_prompts_of_different_lengths_match_one_at_a_time(attention):
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", attention=attention, **SMALL).eval()
    images = _images(3)
    prompts = ["nodule", "the irregular lesion in this synthetic CT scan", "find the cyst"]
    with torch.no_grad():
        batched = model(images, prompts).logits
        single = torch.cat([model(images[i : i + 1], [p]).logits for i, p in enumerate(prompts)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_the_prompt_changes_the_prediction():
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", attention="full", **SMALL).eval()
    with torch.no_grad():
        a = model(_images(1), ["nodule"]).logits
        b = model(_images(1), ["vessel segment"]).logits
    assert (a - b).abs().max() > 1e-4


def test_same_seed_same_mask_and_different_seed_different_sets():
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", **SMALL).eval()
    x = _images(1)
    run = lambda s: model(x, ["nodule"], generator=torch.Generator().manual_seed(s), return_sampling=True)  # noqa: E731
    with torch.no_grad():
        a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.logits, b.logits)
    assert not torch.equal(a.sampling[2].keep, c.sampling[2].keep)


def test_level_logits_equal_resized_full_resolution_logits():
    """The decoder computes sampling logits from resized mask features: resize is linear."""
    g = torch.Generator().manual_seed(0)
    e, feats = torch.randn(2, 4, 16, generator=g), torch.randn(2, 16, 64, 64, generator=g)
    full = torch.einsum("bqc,bchw->bqhw", e, feats)
    for size in [(8, 8), (16, 16), (32, 32)]:
        a = F.interpolate(full, size=size, mode="bilinear", align_corners=False)
        b = torch.einsum("bqc,bchw->bqhw", e, F.interpolate(feats, size=size, mode="bilinear", align_corners=False))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_all_attention_modes_run_and_train():
    for attention in ("boltzmann", "full", "masked", "uniform"):
        model = boltzformer.build_model("tiny", attention=attention, **SMALL)
        out = model(_images(2, 96), ["a", "b"], return_aux=True)
        (out.logits.mean() + sum(a.mean() for a in out.aux_logits)).backward()
        grads = [p.grad for p in model.decoder.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), attention


def test_invalid_inputs_raise_clear_errors():
    model = boltzformer.build_model("tiny", **SMALL)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 100, 100), ["x"])
    with pytest.raises(ValueError, match="one prompt per image"):
        model(torch.zeros(2, 3, 64, 64), ["x"])
    with pytest.raises(ValueError, match=r"prompts\[0\] is empty"):
        model(torch.zeros(1, 3, 64, 64), ["  "])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 64, 64), ["x"])
    with pytest.raises(ValueError, match="unknown preset 'tiyn'.*did you mean 'tiny'"):
        boltzformer.build_model("tiyn")
    with pytest.raises(ValueError, match="unknown model setting 'num_layer'"):
        boltzformer.build_model("tiny", num_layer=3)
    with pytest.raises(ValueError, match="attention"):
        boltzformer.build_model("tiny", attention="sparse")


def test_gather_and_dense_implementations_give_the_same_output():
    torch.manual_seed(0)
    gather = boltzformer.build_model("tiny", **SMALL).eval()
    dense = boltzformer.build_model("tiny", attention_impl="dense", **SMALL).eval()
    dense.load_state_dict(gather.state_dict())
    x = _images(2)
    with torch.no_grad():
        a = gather(x, ["nodule", "cyst"], generator=torch.Generator().manual_seed(5)).logits
        b = dense(x, ["nodule", "cyst"], generator=torch.Generator().manual_seed(5)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attention_impl"):
        boltzformer.build_model("tiny", attention_impl="sparse")


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = boltzformer.build_model("tiny", **SMALL)
    ckpt = boltzformer.build_model("tiny", gradient_checkpointing=True, **SMALL)
    ckpt.load_state_dict(plain.state_dict())
    x = _images(2, 96)
    grads = []
    for model in (plain, ckpt):
        out = model(x, ["nodule", "cyst"], generator=torch.Generator().manual_seed(1), return_aux=True)
        (out.logits.mean() + sum(a.mean() for a in out.aux_logits)).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_channels_last_encoder_gives_the_same_output_and_token_major_maps():
    assert boltzformer.get_preset("hiera-s").channels_last and not boltzformer.get_preset("tiny").channels_last
    torch.manual_seed(0)
    plain = boltzformer.build_model("tiny", attention="full", **SMALL).eval()
    cl = boltzformer.build_model("tiny", attention="full", channels_last=True, **SMALL).eval()
    cl.load_state_dict(plain.state_dict())
    x = _images(2)
    with torch.no_grad():
        feats = cl.encode_image(x)
        a = cl(x, ["nodule", "cyst"]).logits
        b = plain(x, ["nodule", "cyst"]).logits
    # the pixel decoder's maps come out channels-last: the decoder reads them as (B, HW, C) without a copy
    assert feats.mask_features.is_contiguous(memory_format=torch.channels_last)
    assert all(m.is_contiguous(memory_format=torch.channels_last) for m in feats.multi_scale)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_mask_logits_of_channels_last_maps_equal_einsum_without_copying_the_map():
    from torch.utils._python_dispatch import TorchDispatchMode

    from boltzformer.model.decoder import mask_logits

    class Copies(TorchDispatchMode):  # shapes of every copy made
        def __init__(self) -> None:
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.copy_, torch.ops.aten.clone):
                self.shapes.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(0)
    e = torch.randn(1, 5, 16, generator=g, requires_grad=True)
    f = torch.randn(1, 16, 6, 7, generator=g)
    expected = torch.einsum("bqc,bchw->bqhw", e, f)
    (grad_e,) = torch.autograd.grad(expected.square().sum(), e)
    f_cl = f.contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.testing.assert_close(mask_logits(e, f_cl, flat=True), expected.flatten(2))
    assert mask_logits(e, f_cl, flat=True).is_contiguous()
    with Copies() as copies:
        got = mask_logits(e, f_cl)
        got.square().sum().backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(e.grad, grad_e)
    # einsum copies the map's gradient (128 MB at 1024 x 1024) back into channels-last; this does not
    assert f_cl.grad.is_contiguous(memory_format=torch.channels_last)
    assert tuple(f.shape) not in copies.shapes, copies.shapes


def test_without_the_text_conditioned_prior_the_first_sampling_ignores_the_prompt():
    """pre_self_attention=False (the paper's "w/o text-conditioned prior" ablation): the first layer
    samples from the learned queries' masks alone, the same for every prompt; with the prior it does not."""
    images = _images(1).expand(2, -1, -1, -1)
    prompts = ["nodule", "the irregular lesion"]
    first = {}
    for prior in (True, False):
        torch.manual_seed(0)
        model = boltzformer.build_model("tiny", pre_self_attention=prior, **SMALL).eval()
        assert hasattr(model.decoder, "initial_self_attention_layer") == prior
        with torch.no_grad():
            out = model(images, prompts, generator=torch.Generator().manual_seed(0), return_sampling=True)
        first[prior] = out.sampling[0].probs
    torch.testing.assert_close(first[False][0], first[False][1])
    assert not torch.allclose(first[True][0], first[True][1])


def test_same_seed_same_sets_and_mask_with_and_without_the_c_kernels(monkeypatch):
    """The draws come from one counter-based stream whether or not a C compiler is present. Later
    layers' distributions come from attention outputs whose float32 sums are ordered differently
    (about 1e-7 relative), which could flip a draw lying that close to a boundary of the cumulative
    distribution: with this seed none does, and the masks agree."""
    from boltzformer.model.kernels import cpu as cpu_kernels

    if not cpu_kernels.available(torch.zeros(1)):
        pytest.skip("no C compiler: the CPU kernels are not built (nothing to compare with)")
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", **SMALL).eval()
    x = _images(1)
    runs = []
    for kernels in ("1", "0"):
        monkeypatch.setenv("BOLTZFORMER_CPU_KERNELS", kernels)
        with torch.no_grad():
            runs.append(model(x, ["nodule"], generator=torch.Generator().manual_seed(3), return_sampling=True))
    for a, b in zip(runs[0].sampling, runs[1].sampling):
        assert torch.equal(a.keep, b.keep)
    torch.testing.assert_close(runs[0].logits, runs[1].logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(runs[0].logits > 0, runs[1].logits > 0)
