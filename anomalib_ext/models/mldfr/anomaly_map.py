"""Anomaly map of MLDFR: squared restoration error summed over channels, upsampled and smoothed.

Eq. 8 of the paper sums, over channels, the upsampled squared differences between the restored
features and the test image's own target features. Bilinear upsampling is linear, so the channel
sum is taken first on the token grid (cheaper, same result), then upsampled to the input size
(``align_corners=False``) and smoothed with a Gaussian (sigma 8 px at 384 px input).

Unlike reverse distillation's map (cosine distance, several levels, ``align_corners=True``), this
is one fused level and a squared L2 distance.

Example:
    >>> import torch
    >>> from anomalib_ext.models.mldfr.anomaly_map import AnomalyMapGenerator
    >>> generator = AnomalyMapGenerator(input_size=(64, 64), sigma=4.0)
    >>> restored, target = torch.rand(2, 8, 4, 4), torch.rand(2, 8, 4, 4)
    >>> generator(restored, target).shape
    torch.Size([2, 1, 64, 64])

See Also:
    - Spec: section 2.5 and assumptions A26-A28 of ``methods/mldfr.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from anomalib.models.components import GaussianBlur2d
from torch import nn

MAP_CHANNEL_REDUCTIONS = ("sum", "mean")


class AnomalyMapGenerator(nn.Module):
    """``A = Gauss_sigma(upsample(sum_c (R - F)^2))``, shape ``(B, 1, H, W)``.

    Args:
        input_size: ``(H, W)`` of the output map.
        sigma: A28: Gaussian sigma in pixels (paper "kernel 8" = sigma 8 at 384 px); kernel
            ``2 * floor(4 sigma + 0.5) + 1`` as scipy's ``gaussian_filter``. ``0`` disables smoothing.
        map_channel_reduction: A26: ``"sum"`` over channels (eq. 8) or ``"mean"`` (text: "average").
        align_corners: A27: ``align_corners`` of the bilinear upsampling.
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        sigma: float = 8.0,
        map_channel_reduction: str = "sum",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if map_channel_reduction not in MAP_CHANNEL_REDUCTIONS:
            msg = (
                f"map_channel_reduction={map_channel_reduction!r} is invalid: "
                f"accepted values are {MAP_CHANNEL_REDUCTIONS}."
            )
            raise ValueError(msg)
        self.input_size = tuple(int(side) for side in input_size)
        self.map_channel_reduction = map_channel_reduction
        self.align_corners = align_corners
        self.blur = GaussianBlur2d(sigma=sigma, channels=1) if sigma > 0 else nn.Identity()

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Map from ``(B, C, h, w)`` restored and target features."""
        squared = (restored.float() - target.float()).pow(2)
        if self.map_channel_reduction == "sum":
            grid_map = squared.sum(dim=1, keepdim=True)
        else:
            grid_map = squared.mean(dim=1, keepdim=True)
        upsampled = F.interpolate(grid_map, size=self.input_size, mode="bilinear", align_corners=self.align_corners)
        return self.blur(upsampled)
