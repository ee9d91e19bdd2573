"""The end of every model's inference path: smooth the anomaly map, take the image score from it.

All five models end the same way: a raw ``(B, 1, H, W)`` map at the input size is smoothed with a
Gaussian and the image score is a statistic of the smoothed map. :class:`AnomalyScorer` does both
with one naming (``sigma``, ``score_mode``, ``topk_fraction``) and one output shape (``pred_score``
``(B,)``, like anomalib's PatchCore), using anomalib's ``GaussianBlur2d`` (kernel ``2 * int(4 sigma +
0.5) + 1``, reflect border, the same blur as anomalib's RD/PatchCore maps). It is traceable, so it is
part of the exported graph.

Example:
    >>> scorer = AnomalyScorer(sigma=4, score_mode="topk", topk_fraction=0.01)
    >>> output = scorer(torch.rand(2, 1, 64, 64))
    >>> output.pred_score.shape, output.anomaly_map.shape
    (torch.Size([2]), torch.Size([2, 1, 64, 64]))
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import GaussianBlur2d
from torch import nn


class ScoreMode(str, Enum):
    """How the image score is taken from the smoothed anomaly map."""

    MAX = "max"
    MEAN = "mean"
    TOPK = "topk"


#: The score modes as the command line and YAML spell them (``score_mode: topk``).
ScoreModeName = Literal["max", "mean", "topk"]


def image_score(
    anomaly_map: torch.Tensor, mode: ScoreMode | str = ScoreMode.MAX, topk_fraction: float = 0.01
) -> torch.Tensor:
    """Image score ``(B,)`` of a ``(B, 1, H, W)`` (or ``(B, H, W)``) map.

    Args:
        anomaly_map: The anomaly map.
        mode: ``"max"``, ``"mean"``, or ``"topk"`` (mean of the ``topk_fraction`` highest values).
        topk_fraction: Fraction of the map's pixels averaged by ``"topk"``, in ``(0, 1]``.
    """
    flat = anomaly_map.flatten(1)
    mode = ScoreMode(mode)
    if mode is ScoreMode.MAX:
        return flat.amax(dim=1)
    if mode is ScoreMode.MEAN:
        return flat.mean(dim=1)
    count = max(1, int(topk_fraction * flat.shape[1]))
    return flat.topk(count, dim=1).values.mean(dim=1)


class AnomalyScorer(nn.Module):
    """Gaussian smoothing of the map, then the image score: ``InferenceBatch(pred_score, anomaly_map)``.

    Args:
        sigma: Standard deviation (pixels at the input size) of the Gaussian smoothing; 0 = none.
        score_mode: Image score from the smoothed map (:class:`ScoreMode`).
        topk_fraction: Fraction of pixels averaged when ``score_mode="topk"``.

    Raises:
        ValueError: ``sigma`` is negative or ``topk_fraction`` is outside ``(0, 1]``.
    """

    def __init__(
        self,
        sigma: float = 4.0,
        score_mode: ScoreMode | str = ScoreMode.MAX,
        topk_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        if sigma < 0:
            msg = f"sigma={sigma} is invalid: expected the Gaussian's standard deviation in pixels, >= 0 (0 = none)."
            raise ValueError(msg)
        if not 0.0 < topk_fraction <= 1.0:
            msg = f"topk_fraction={topk_fraction} is invalid: expected a fraction of the map's pixels in (0, 1]."
            raise ValueError(msg)
        self.sigma = float(sigma)
        self.score_mode = ScoreMode(score_mode)
        self.topk_fraction = topk_fraction
        self.blur = GaussianBlur2d(sigma=self.sigma, channels=1) if sigma > 0 else nn.Identity()

    def forward(self, anomaly_map: torch.Tensor) -> InferenceBatch:
        """Smooth ``(B, 1, H, W)`` and score it."""
        anomaly_map = self.blur(anomaly_map)
        return InferenceBatch(
            pred_score=image_score(anomaly_map, self.score_mode, self.topk_fraction),
            anomaly_map=anomaly_map,
        )
