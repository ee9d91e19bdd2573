"""Anomaly map of MLDFR: squared restoration error summed over channels, upsampled to the input size.

Eq. 8 of the paper sums, over channels, the upsampled squared differences between the restored
features and the test image's own target features. Bilinear upsampling is linear, so the channel
sum is taken first on the token grid (cheaper, same result), then upsampled to the input size
(``align_corners=False``). The Gaussian smoothing (sigma 8 px at 384 px input) and the image score
follow in the shared :class:`~anomalib_ext.models.components.AnomalyScorer`.

Unlike reverse distillation's map (cosine distance, several levels, ``align_corners=True``), this
is one fused level and a squared L2 distance, so anomalib's RD ``AnomalyMapGenerator`` does not fit.

Example:
    >>> import torch
    >>> from anomalib_ext.models.mldfr.anomaly_map import AnomalyMapGenerator
    >>> generator = AnomalyMapGenerator(input_size=(64, 64))
    >>> restored, target = torch.rand(2, 8, 4, 4), torch.rand(2, 8, 4, 4)
    >>> generator(restored, target).shape
    torch.Size([2, 1, 64, 64])

See Also:
    - Spec: section 2.5 and assumptions A26-A28 of ``methods/mldfr.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class AnomalyMapGenerator(nn.Module):
    """``upsample(sum_c (R - F)^2)``, shape ``(B, 1, H, W)`` (eq. 8 before the smoothing).

    Args:
        input_size: ``(H, W)`` of the output map.
        channel_reduction: A26: ``"sum"`` over channels (eq. 8) or ``"mean"`` (text: "average").
        align_corners: A27: ``align_corners`` of the bilinear upsampling.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        channel_reduction: Literal["sum", "mean"] = "sum",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = tuple(int(side) for side in input_size)
        self.channel_reduction = channel_reduction
        self.align_corners = align_corners

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Map from ``(B, C, h, w)`` restored and target features."""
        squared = (restored.float() - target.float()).pow(2)
        if self.channel_reduction == "sum":
            grid_map = squared.sum(dim=1, keepdim=True)
        else:
            grid_map = squared.mean(dim=1, keepdim=True)
        return F.interpolate(grid_map, size=self.input_size, mode="bilinear", align_corners=self.align_corners)
