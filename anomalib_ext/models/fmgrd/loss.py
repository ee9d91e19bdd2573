"""Distillation loss of FMGRD: per-pixel cosine distance, spatial mean, summed over levels (eq. 13).

See Also:
    :class:`anomalib.models.image.reverse_distillation.loss.ReverseDistillationLoss`, RD's flattened
    variant, available here as ``mode="flatten"`` for parity runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class FmgrdLoss(nn.Module):
    """Knowledge-distillation loss ``L_kd`` of paper eq. 13 (with the per-pixel map of eq. 12).

    ``L_kd(A, B) = sum_i mean_{b,h,w} (1 - cos(A^i[b,:,h,w], B^i[b,:,h,w]))``: range [0, 2 * levels],
    invariant to a positive scaling of either feature. The training loss is ``L_kd(F_E, F_G)`` plus, when
    ``decoder_weight`` > 0 (A11), ``decoder_weight * L_kd(F_E, F_D)`` on the student's own features.
    Computed in float32 (cosine eps underflows in fp16). The L2 term of eq. 14 is Adam's weight decay.

    Args:
        mode: ``"pixel"`` (eq. 13, default, A11) or ``"flatten"`` (anomalib's/RD's loss: one cosine per
            image over the flattened C*H*W vector).
        decoder_weight: A11: weight of the extra ``L_kd(F_E, F_D)`` term.

    Example:
        >>> loss = FmgrdLoss()
        >>> f = [torch.rand(2, 8, 4, 4)]
        >>> float(loss(f, f))
        0.0
    """

    def __init__(self, mode: Literal["pixel", "flatten"] = "pixel", decoder_weight: float = 0.0) -> None:
        super().__init__()
        self.mode = mode
        self.decoder_weight = decoder_weight

    def distance(
        self, teacher_features: Sequence[torch.Tensor], other_features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """``L_kd``: the mean cosine distance of each level, summed over the levels."""
        total = teacher_features[0].new_zeros((), dtype=torch.float32)
        for teacher_level, other_level in zip(teacher_features, other_features, strict=True):
            teacher, other = teacher_level.float(), other_level.float()
            if self.mode == "pixel":
                distance = 1 - F.cosine_similarity(teacher, other, dim=1)
            else:
                distance = 1 - F.cosine_similarity(teacher.flatten(1), other.flatten(1), dim=1)
            total = total + distance.mean()
        return total

    def forward(
        self,
        teacher_features: Sequence[torch.Tensor],
        generated_features: Sequence[torch.Tensor],
        decoded_features: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The scalar training loss ``L_kd(F_E, F_G) [+ decoder_weight * L_kd(F_E, F_D)]``."""
        loss = self.distance(teacher_features, generated_features)
        if self.decoder_weight > 0 and decoded_features is not None:
            loss = loss + self.decoder_weight * self.distance(teacher_features, decoded_features)
        return loss
