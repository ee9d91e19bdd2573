"""Multi-layer feature fusion of SMCC (Sec. III-A, Algorithm 1 "concat Resize(phi_j) to phi_c").

Every tapped feature map is brought to the resolution of one target layer and the maps are
concatenated along channels. Coarser maps are upsampled (bilinear by default), finer maps are
average-pooled with a static kernel equal to the stride ratio. No parameters unless
``projection_dim`` is set (ASSUMPTION A4).

The optional neighbourhood mean (``aggregation_kernel`` > 1, off in the paper configuration) is
anomalib PatchCore's: each tapped map is averaged on its own grid, zero padding counted, before it
is resized. The spec's sketch averages once after the concatenation; with the harness (README, "Our
results": ``smcc-bank64`` against ``smcc-pcagg``, both at learning rate 1e-3 with the whole 64-image
bank) that order gave the demo textures' mean image AUROC 0.624 against 0.842, ELPV mono 0.909 against
0.943: a coarse tap averaged on its own grid sees a 3x3 neighbourhood of its own cells, not of the
upsampled ones.

See Also:
    :class:`anomalib_ext.models.smcc.torch_model.SmccModel`
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MultiLayerFusion(nn.Module):
    """Resize the tapped maps to the target layer's resolution and concatenate them.

    Args:
        channels: Channels of each tapped map, in tapped order.
        reductions: Stride of each tapped map w.r.t. the input, in tapped order.
        target_index: Index of the tapped layer whose resolution is kept (A3, A24).
        upsample_mode: Interpolation mode for coarser maps (A3: ``"bilinear"``).
        aggregation_kernel: Size of anomalib PatchCore's neighbourhood mean, applied to every tapped
            map before it is resized (zero padding counted, as ``torch.nn.AvgPool2d``'s default);
            1 disables it (A4).
        projection_dim: Output channels of an optional learned 1x1 convolution; ``None`` keeps
            the concatenation as is (A4).

    Example:
        >>> fusion = MultiLayerFusion([8, 16], [4, 8])
        >>> fusion([torch.rand(1, 8, 16, 16), torch.rand(1, 16, 8, 8)]).shape
        torch.Size([1, 24, 16, 16])
    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        target_index: int = 0,
        upsample_mode: str = "bilinear",
        aggregation_kernel: int = 1,
        projection_dim: int | None = None,
    ) -> None:
        super().__init__()
        if len(channels) != len(reductions):
            msg = f"channels ({len(channels)}) and reductions ({len(reductions)}) must have the same length"
            raise ValueError(msg)
        if not 0 <= target_index < len(channels):
            msg = f"fusion_layer_index must be in [0, {len(channels) - 1}], got {target_index}"
            raise ValueError(msg)
        if aggregation_kernel < 1 or aggregation_kernel % 2 == 0:
            msg = f"aggregation_kernel must be a positive odd integer, got {aggregation_kernel}"
            raise ValueError(msg)
        self.channels = list(channels)
        self.reductions = list(reductions)
        self.target_index = target_index
        self.upsample_mode = upsample_mode
        self.aggregation = (
            nn.AvgPool2d(aggregation_kernel, stride=1, padding=aggregation_kernel // 2)
            if aggregation_kernel > 1
            else nn.Identity()
        )
        self.projection = nn.Conv2d(sum(channels), projection_dim, 1) if projection_dim else nn.Identity()
        self.out_channels = projection_dim or sum(channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse ``features`` (tapped order) into one map of shape ``(B, C, H_t, W_t)``."""
        height, width = features[self.target_index].shape[-2:]
        target_reduction = self.reductions[self.target_index]
        resized = []
        for feature, reduction in zip(features, self.reductions, strict=True):
            fitted = self.aggregation(feature)
            if reduction < target_reduction:
                ratio = target_reduction // reduction
                fitted = F.avg_pool2d(fitted, kernel_size=ratio, stride=ratio)
            if fitted.shape[-2:] != (height, width):
                align = False if self.upsample_mode in {"bilinear", "bicubic"} else None
                fitted = F.interpolate(fitted, size=(height, width), mode=self.upsample_mode, align_corners=align)
            resized.append(fitted)
        return self.projection(torch.cat(resized, dim=1))
