"""A post-processor whose normalisation keeps the order of every score, so metrics see no ties.

anomalib's :class:`~anomalib.post_processing.PostProcessor` maps scores to ``[0, 1]`` with
``((x - threshold) / (max - min) + 0.5).clamp(0, 1)``, ``min``/``max``/``threshold`` taken from the
validation set. When the validation images are all normal (``val_split_mode: from_train``), every
defect score above the normal maximum plus half the normal range becomes exactly ``1.0``: the
defect pixels then tie with each other and with the brightest normal pixels, and pixel AUROC, AUPRO
and F1-max collapse although the raw map ranks them correctly. Test metrics are computed after the
post-processor, so they inherit the ties.

:class:`OrderPreservingPostProcessor` replaces the clamp by a strictly increasing squashing
``f(z) = 0.5 + z / (2 (1 + |z|))`` of ``z = (x - threshold) / (max - min)``: values stay in
``(0, 1)`` (heat maps and exports look as before), the threshold still maps to ``0.5`` (the same
labels and masks as anomalib's), and two different raw scores stay different (in float32 up to
``|z|`` of about 10^6), so AUROC, AUPRO, F1-max and average precision equal those of the raw scores.

Example:
    >>> from anomalib_ext.post_processing import OrderPreservingPostProcessor
    >>> post_processor = OrderPreservingPostProcessor()
    >>> x = torch.tensor([0.0, 1.0, 5.0, 50.0])
    >>> y = post_processor._normalize(x, torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.5))
    >>> bool((y.diff() > 0).all()) and bool((y < 1).all())
    True
"""

from __future__ import annotations

import torch
from anomalib.post_processing import PostProcessor

__all__ = ["OrderPreservingPostProcessor"]


class OrderPreservingPostProcessor(PostProcessor):
    """anomalib's post-processor with a strictly increasing normalisation instead of a clamp.

    Same arguments, thresholds, checkpoint state and exported graph structure as
    :class:`anomalib.post_processing.PostProcessor`; only ``_normalize`` differs (see the module docstring).
    """

    @staticmethod
    def _normalize(
        preds: torch.Tensor | None,
        norm_min: torch.Tensor,
        norm_max: torch.Tensor,
        threshold: torch.Tensor,
    ) -> torch.Tensor | None:
        """Map ``preds`` into ``(0, 1)`` with the threshold at 0.5, strictly increasing, never clamped."""
        if preds is None:
            return preds
        threshold = torch.where(torch.isnan(threshold), (norm_max + norm_min) / 2, threshold)
        value_range = norm_max - norm_min
        safe_range = torch.where(value_range == 0, torch.ones_like(value_range), value_range)
        z = (preds - threshold) / safe_range
        normalized = 0.5 + z / (2 * (1 + z.abs()))
        has_range = ~torch.isnan(norm_min) & ~torch.isnan(norm_max)
        return torch.where(has_range, normalized, preds)
