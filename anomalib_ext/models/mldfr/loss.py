"""Loss of MLDFR: restoration MSE plus lambda times the per-channel cosine distance.

Example:
    >>> import torch
    >>> from anomalib_ext.models.mldfr.loss import MLDFRLoss
    >>> target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])     # (B=1, C=2, L=2)
    >>> restored = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    >>> float(MLDFRLoss()(restored, target))                    # 1.0 + 140 * 0.5
    71.0

See Also:
    - Spec: section 2.3 and assumptions A20, A21 of ``methods/mldfr.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class MLDFRLoss(nn.Module):
    """``L = mean_b [ L_val + lambda * L_dir ]`` (eq. 6), with ``L_val`` of eq. 4 and ``L_dir`` of eq. 5.

    With ``r`` the restored and ``y`` the target features flattened to ``(B, C, L)``:
    eq. 4 ``L_val = (1/C) sum_c ||r_c - y_c||^2`` (squared error summed over the ``L`` positions of a
    channel, then averaged over channels) and eq. 5 ``L_dir = (1/C) sum_c (1 - cos(r_c, y_c))`` (one
    cosine per channel between two ``L``-vectors). ``F.mse_loss`` would average over the positions
    too, which is ``L`` times smaller and breaks the balance that ``lambda = 140`` was tuned for.
    Both terms are computed in float32 (feature maps can reach values that overflow fp16).

    Args:
        loss_lambda: A21: weight of the direction term (paper: 140).
        channel_reduction: A20: ``"mean"`` over channels (eqs. 4-5) or ``"sum"`` (public code; ``C``
            times larger, same balance between the terms).
        cosine_axis: A20: ``"spatial"`` (one cosine per channel over positions, eq. 5) or
            ``"channel"`` (one cosine per position across channels, averaged).
        use_mse: Table X ablation: ``False`` drops ``L_val`` ("cosine distance only").

    The choices are checked where they are configured
    (:class:`~anomalib_ext.models.mldfr.config.TrainingConfig`, and the command line's parser).
    """

    def __init__(
        self,
        loss_lambda: float = 140.0,
        channel_reduction: Literal["mean", "sum"] = "mean",
        cosine_axis: Literal["spatial", "channel"] = "spatial",
        use_mse: bool = True,
    ) -> None:
        super().__init__()
        self.loss_lambda = loss_lambda
        self.channel_reduction = channel_reduction
        self.cosine_axis = cosine_axis
        self.use_mse = use_mse

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        return values.mean(dim=1) if self.channel_reduction == "mean" else values.sum(dim=1)

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss of restored features against the intact-image features.

        Args:
            restored: ``(B, C, ...)`` output of the restorer.
            target: ``(B, C, ...)`` features of the intact image (no gradient needed).

        Returns:
            Scalar loss.
        """
        with torch.autocast(device_type=restored.device.type, enabled=False):
            restored = restored.flatten(2).float()
            target = target.flatten(2).float()
            loss = restored.new_zeros(restored.shape[0])
            if self.use_mse:
                loss = loss + self._reduce((restored - target).pow(2).sum(dim=2))  # eq. 4
            if self.cosine_axis == "spatial":
                direction = self._reduce(1 - F.cosine_similarity(restored, target, dim=2, eps=1e-8))  # eq. 5
            else:
                direction = (1 - F.cosine_similarity(restored, target, dim=1, eps=1e-8)).mean(dim=1)
            return (loss + self.loss_lambda * direction).mean()  # eq. 6
