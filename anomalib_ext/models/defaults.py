"""What every model of the package configures the same way.

- :func:`pro_evaluator`: anomalib's default test metrics plus the papers' PRO, which is anomalib's
  ``AUPRO`` up to a false-positive rate of 0.3 (anomalib's ``PRO`` metric is something else).
- :func:`reject_normalize`: models that corrupt images in [0, 1] pixel space (damage, Perlin textures)
  must not receive normalised images from the pre-processor.

Example:
    >>> from anomalib_ext.models.defaults import pro_evaluator
    >>> evaluator = pro_evaluator(fpr_limit=0.3)
"""

from __future__ import annotations

from collections.abc import Sequence

from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.metrics import AUPRO, AUROC, AnomalibMetric, Evaluator, F1Score
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Normalize


def pro_evaluator(fpr_limit: float = 0.3, val_metrics: Sequence[AnomalibMetric] | None = None) -> Evaluator:
    """Image/pixel AUROC and F1 (anomalib's defaults) plus ``AUPRO(fpr_limit)``, the papers' PRO.

    Args:
        fpr_limit: Upper false-positive-rate limit of the PRO curve (0.3 in the papers).
        val_metrics: Metrics computed on validation (none by default, as in anomalib).

    Returns:
        The evaluator for ``AnomalibModule.configure_evaluator``.
    """
    test_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=fpr_limit),
    ]
    return Evaluator(val_metrics=list(val_metrics or []), test_metrics=test_metrics)


def reject_normalize(pre_processor: PreProcessor | bool | None, reason: str) -> None:
    """Raise ``ValueError`` (with ``reason``) when the pre-processor's transform normalises images."""
    if isinstance(pre_processor, PreProcessor) and extract_transforms_by_type(pre_processor.transform, Normalize):
        msg = f"{reason} Remove Normalize from the pre-processor transforms."
        raise ValueError(msg)
