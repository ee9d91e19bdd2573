"""Loss of SMCC: centre loss L_c (Eq. 4) plus margin loss L_o (Eq. 5), combined as in Eq. (6).

See Also:
    :class:`anomalib_ext.models.smcc.lightning_model.SMCC`
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class SmccLoss(nn.Module):
    """``L_SMCC = lambda_c L_c + lambda_o L_o`` (Eq. 6) against fixed centres.

    With ``d1``/``d2`` the smallest/second-smallest distance of a patch to the centres:
    ``L_c = sum_j d1_j`` (Eq. 4) and ``L_o = sum_j (d1_j - d2_j)`` (Eq. 5, no hinge, <= 0). Distances
    are computed in float32 as ``sqrt(max(|p|^2 + |c|^2 - 2 p.c, eps))``: clamping to ``eps > 0``
    keeps the gradient finite when a patch sits on a centre (spec trap T8). The loss is usually
    negative.

    Args:
        lambda_c: Weight of L_c (Eq. 6: 1).
        lambda_o: Weight of L_o (Eq. 6: 1).
        distance: ``"euclidean"`` or ``"squared_euclidean"`` (A11; checked by ``TrainingConfig``).
        reduction: ``"mean"`` over all patches of the batch or ``"sum"`` (A12; checked by ``TrainingConfig``).
        eps: Clamp before the square root (A11: 1e-12).

    Example:
        >>> loss = SmccLoss()
        >>> total, parts = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0], [4.0, 0.0]]))
        >>> round(float(total), 4)
        -1.0
    """

    def __init__(
        self,
        lambda_c: float = 1.0,
        lambda_o: float = 1.0,
        distance: Literal["euclidean", "squared_euclidean"] = "euclidean",
        reduction: Literal["mean", "sum"] = "mean",
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.lambda_c = lambda_c
        self.lambda_o = lambda_o
        self.distance = distance
        self.reduction = reduction
        self.eps = eps

    def forward(self, patches: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of ``patches`` ``(N, C)`` against ``centres`` ``(n_c, C)``; returns the total and its parts."""
        if centres.shape[0] < 2:
            msg = f"the SMCC loss needs at least 2 centres (L_o uses the second-nearest), got {centres.shape[0]}"
            raise ValueError(msg)
        points, centres = patches.float(), centres.detach().float()
        squared = points.pow(2).sum(1, keepdim=True) + centres.pow(2).sum(1)[None] - 2.0 * points @ centres.T
        distances = squared.clamp_min(self.eps).sqrt() if self.distance == "euclidean" else squared.clamp_min(0)
        nearest_two = distances.topk(2, dim=1, largest=False).values
        d1, d2 = nearest_two[:, 0], nearest_two[:, 1]
        reduce = torch.mean if self.reduction == "mean" else torch.sum
        loss_c, loss_o = reduce(d1), reduce(d1 - d2)
        total = self.lambda_c * loss_c + self.lambda_o * loss_o
        return total, {"loss_c": loss_c.detach(), "loss_o": loss_o.detach(), "mean_d1": d1.detach().mean()}
