"""A pretrained HuggingFace text encoder, tested offline with a tiny model saved locally."""

from __future__ import annotations

import pytest
import torch

import boltzformer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "lung", "nodule", "in", "ct", "scan", "the", "cyst", "find"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    BertModel(config).save_pretrained(path)
    return path


def test_model_with_a_local_hf_text_encoder(tiny_bert):
    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", num_layers=3, num_queries=4, attention="full", **{"text.hf_model": str(tiny_bert)}).eval()
    assert type(model.text_encoder).__name__ == "HFTextEncoder"
    text = model.text_encoder(["nodule", "find the lung nodule in the ct scan"], torch.device("cpu"))
    assert text.tokens.shape[-1] == 64 and text.padding_mask[0].sum() > 0 and not text.padding_mask[1].any()
    x = torch.rand(2, 3, 64, 64) * 255
    prompts = ["nodule", "find the lung nodule in the ct scan"]
    with torch.no_grad():
        batched = model(x, prompts).logits
        single = torch.cat([model(x[i : i + 1], [p]).logits for i, p in enumerate(prompts)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)  # padding is never attended


def test_a_missing_hf_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="text.hf_model"):
        boltzformer.build_model("tiny", **{"text.hf_model": str(tmp_path / "nope")})


def test_own_checkpoint_of_an_hf_text_model_loads_back(tiny_bert, tmp_path):
    from boltzformer.model.weights import load_pretrained

    torch.manual_seed(0)
    model = boltzformer.build_model("tiny", num_layers=2, num_queries=4, **{"text.hf_model": str(tiny_bert)})
    boltzformer.save_checkpoint(model, tmp_path / "m.ckpt")
    report = load_pretrained(model, tmp_path / "m.ckpt")
    assert report.tokenizer == f"hf:{tiny_bert}" and report.missing == {}
