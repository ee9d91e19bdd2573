"""Anomaly map of FMGRD: per-level ``1 - cos`` (eq. 12), upsampled, combined, Gaussian-smoothed (A15).

Same computation as anomalib's Reverse Distillation ``AnomalyMapGenerator`` in ``"add"`` mode, but the
blur is built once (not per call) and every choice is a constructor argument.

See Also:
    :class:`anomalib.models.image.reverse_distillation.anomaly_map.AnomalyMapGenerator`
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from anomalib.models.components import GaussianBlur2d
from torch import nn


class AnomalyMapGenerator(nn.Module):
    """Combine the per-level cosine-distance maps into one ``(B, 1, H, W)`` anomaly map.

    Args:
        image_size: Output size ``(H, W)`` (the model's input size).
        sigma: Standard deviation of the Gaussian smoothing (A15: 4; kernel ``2*int(4*sigma+0.5)+1``).
            ``0`` disables smoothing.
        mode: ``"add"`` (sum over levels, A15) or ``"multiply"``.
        align_corners: ``align_corners`` of the bilinear upsampling (A15: True, as RD).
    """

    def __init__(
        self,
        image_size: Sequence[int],
        sigma: float = 4,
        mode: str = "add",
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if mode not in {"add", "multiply"}:
            msg = f"anomaly_map_mode must be 'add' or 'multiply'; got {mode!r}."
            raise ValueError(msg)
        self.image_size = tuple(int(side) for side in image_size)
        self.mode = mode
        self.align_corners = align_corners
        kernel_size = 2 * int(4.0 * sigma + 0.5) + 1
        self.blur = (
            GaussianBlur2d(kernel_size=(kernel_size, kernel_size), sigma=(sigma, sigma)) if sigma > 0 else nn.Identity()
        )

    def forward(
        self,
        teacher_features: Sequence[torch.Tensor],
        generated_features: Sequence[torch.Tensor],
        image_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Return the smoothed anomaly map, ``(B, 1, H, W)``, at ``image_size`` (default: the constructor's)."""
        size = tuple(image_size) if image_size is not None else self.image_size
        anomaly_map = None
        for teacher, generated in zip(teacher_features, generated_features, strict=True):
            distance = 1 - F.cosine_similarity(teacher.float(), generated.float(), dim=1)  # eq. 12
            distance = F.interpolate(
                distance.unsqueeze(1), size=size, mode="bilinear", align_corners=self.align_corners
            )
            if anomaly_map is None:
                anomaly_map = distance
            elif self.mode == "add":
                anomaly_map = anomaly_map + distance
            else:
                anomaly_map = anomaly_map * distance
        return self.blur(anomaly_map)
