"""Existence head: is the prompted target in the image at all?

A text-promptable segmenter asked for "liver tumor" in a scan without one should say so rather than
paint the most tumour-like pixels. This is BiomedParse v2's classifier, kept layout-compatible so that
its released weights load (``sem_seg_head.predictor.classifier*`` -> ``decoder.existence.classifier*``):

- one learned query ``classifier_query`` (1, C);
- after every decoder layer it cross-attends, with no attention mask, to that layer's detached
  [queries ; text tokens] (after the layer's self-attention), their positions ([query_embed ; initial
  text tokens], detached) added to the keys; then its own FFN;
- ``classifier`` Linear(C -> 1) gives one logit per image and prompt.

The inputs are detached, so the existence loss trains only this head and never pulls the mask path.
"""

from __future__ import annotations

from torch import Tensor, nn

from boltzformer.model.layers import CrossAttentionLayer, FFNLayer

__all__ = ["ExistenceHead"]


class ExistenceHead(nn.Module):
    """One classifier query refined after each of ``num_layers`` decoder layers.

    Args:
        hidden_dim: decoder width C.
        num_heads: attention heads.
        ffn_dim: FFN hidden size.
        num_layers: decoder layers (one cross-attention + FFN per layer).
    """

    def __init__(self, hidden_dim: int, num_heads: int, ffn_dim: int, num_layers: int) -> None:
        super().__init__()
        self.classifier_query = nn.Embedding(1, hidden_dim)
        self.classifier_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.classifier_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, ffn_dim) for _ in range(num_layers))
        self.classifier = nn.Linear(hidden_dim, 1)

    def initial(self, batch: int) -> Tensor:
        """The classifier query for ``batch`` images: (B, 1, C)."""
        return self.classifier_query.weight[None].expand(batch, -1, -1)

    def step(self, layer: int, state: Tensor, tokens: Tensor, pos: Tensor, padding_mask: Tensor | None) -> Tensor:
        """Refine ``state`` (B, 1, C) with decoder layer ``layer``'s [queries ; text] ``tokens`` (B, T, C)."""
        keep = None if padding_mask is None else ~padding_mask[:, None, None, :]  # B x 1(heads) x 1 x T
        state = self.classifier_cross_attention_layers[layer](
            state, tokens.detach(), pos=pos.detach(), query_pos=None, keep=keep
        )
        return self.classifier_ffn_layers[layer](state)

    def logit(self, state: Tensor) -> Tensor:
        """(B, 1, C) -> (B,) existence logits."""
        return self.classifier(state[:, 0]).squeeze(-1)
