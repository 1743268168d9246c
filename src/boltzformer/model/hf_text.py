"""A pretrained HuggingFace text encoder (CLIP's text tower, BiomedBERT, ...) behind :class:`TextEncoder`.

``TextConfig.hf_model`` names a hub id or a local directory holding a tokenizer and a model saved
with ``save_pretrained``. Its last hidden states are projected to the decoder's width by a learned
linear layer; padding is masked. Needs the ``hf`` extra (transformers); nothing is downloaded when
``HF_HUB_OFFLINE=1`` and the directory is local.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from boltzformer.model.text import TextEncoder, TextFeatures

__all__ = ["HFTextEncoder"]


class HFTextEncoder(TextEncoder):
    """Args: name_or_path (hub id or local directory), out_dim (decoder width), max_length (tokens)."""

    def __init__(self, *, name_or_path: str, out_dim: int, max_length: int = 77) -> None:
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("a HuggingFace text encoder needs transformers: pip install 'boltzformer[hf]'") from exc
        try:
            config = AutoConfig.from_pretrained(name_or_path)
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            # a CLIP checkpoint holds both towers: take the text tower only
            model_cls = CLIPTextModel if getattr(config, "model_type", "") == "clip" else AutoModel
            self.model = model_cls.from_pretrained(name_or_path)
        except OSError as exc:
            raise ValueError(f"text.hf_model {name_or_path!r}: no tokenizer and model could be loaded ({str(exc).splitlines()[0]})") from None
        self.out_dim = out_dim
        self.max_length = max_length
        self.proj = nn.Linear(self.model.config.hidden_size, out_dim)
        # CLIP pools at the end token, BERT-like models at the first ([CLS])
        self.pool_last = getattr(self.model.config, "model_type", "") in ("clip_text_model", "clip")

    def forward(self, prompts: Sequence[str], device: torch.device) -> TextFeatures:
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        input_ids, attention_mask = tok["input_ids"].to(device, non_blocking=True), tok["attention_mask"].to(device, non_blocking=True)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # B x L x H
        tokens = self.proj(hidden)  # B x L x C
        if self.pool_last:
            pooled = tokens[torch.arange(tokens.shape[0], device=device), attention_mask.sum(-1) - 1]
        else:
            pooled = tokens[:, 0]
        return TextFeatures(tokens=tokens, padding_mask=attention_mask == 0, pooled=pooled)
