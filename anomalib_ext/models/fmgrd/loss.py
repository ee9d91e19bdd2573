"""Distillation loss of FMGRD: per-pixel cosine distance, spatial mean, summed over levels (eq. 13).

See Also:
    :class:`anomalib.models.image.reverse_distillation.loss.ReverseDistillationLoss`, RD's flattened
    variant, available here as ``mode="flatten"`` for parity runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FmgrdLoss(nn.Module):
    """Knowledge-distillation loss ``L_kd`` of paper eq. 13 (with the per-pixel map of eq. 12).

    ``L_kd = sum_i mean_{b,h,w} (1 - cos(F_E^i[b,:,h,w], F_G^i[b,:,h,w]))``: range [0, 2 * levels],
    invariant to a positive scaling of either feature. Computed in float32 (cosine eps underflows in
    fp16). The L2 term of eq. 14 is Adam's weight decay, not part of this module.

    Args:
        mode: ``"pixel"`` (eq. 13, default, A11) or ``"flatten"`` (anomalib's/RD's loss: one cosine per
            image over the flattened C*H*W vector).

    Example:
        >>> loss = FmgrdLoss()
        >>> f = [torch.rand(2, 8, 4, 4)]
        >>> float(loss(f, f))
        0.0
    """

    def __init__(self, mode: str = "pixel") -> None:
        super().__init__()
        if mode not in {"pixel", "flatten"}:
            msg = f"loss_mode must be 'pixel' or 'flatten'; got {mode!r}."
            raise ValueError(msg)
        self.mode = mode

    def forward(
        self, teacher_features: Sequence[torch.Tensor], generated_features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Return the scalar loss summed over the levels."""
        total = teacher_features[0].new_zeros((), dtype=torch.float32)
        for teacher_level, generated_level in zip(teacher_features, generated_features, strict=True):
            teacher, generated = teacher_level.float(), generated_level.float()
            if self.mode == "pixel":
                distance = 1 - F.cosine_similarity(teacher, generated, dim=1)
            else:
                distance = 1 - F.cosine_similarity(teacher.flatten(1), generated.flatten(1), dim=1)
            total = total + distance.mean()
        return total
