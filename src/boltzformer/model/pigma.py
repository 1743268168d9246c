"""PiGMA: pixel-grounded multi-query aggregation of the decoder's per-query masks.

Two paths on the m final mask logits (stride 4), averaged:
(i) query ensemble: the mean of the m logits, upsampled x2 (bilinear);
(ii) pixel-grounded correction: concat(image at H/4, the m logits) -> ConvTranspose2d(k4, s2, p1)
    -> concat(image at H/2) -> 1x1 conv to one channel.
Output: logits at H/2 x W/2. Sizes follow the input (the reference code fixes 256 / 512, which
ties it to 1024 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PiGMA"]


class PiGMA(nn.Module):
    """Args: num_queries m; hidden_channels of the transposed conv (10 in the reference)."""

    def __init__(self, *, num_queries: int, hidden_channels: int = 10, image_channels: int = 3) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(num_queries + image_channels, hidden_channels, kernel_size=4, stride=2, padding=1)
        self.conv = nn.Conv2d(hidden_channels + image_channels, 1, kernel_size=1)

    def forward(self, query_logits: Tensor, image: Tensor) -> Tensor:
        """query_logits (B, Q, h, w) at stride 4; image (B, 3, H, W) normalised -> (B, 1, 2h, 2w)."""
        h, w = query_logits.shape[-2:]
        image_q = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False)
        image_h = F.interpolate(image, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        ensemble = F.interpolate(
            query_logits.mean(1, keepdim=True), size=(2 * h, 2 * w), mode="bilinear", align_corners=False
        )
        correction = self.deconv(torch.cat((image_q, query_logits), dim=1))  # B x hidden x 2h x 2w
        correction = self.conv(torch.cat((image_h, correction), dim=1))  # B x 1 x 2h x 2w
        return (correction + ensemble) / 2
