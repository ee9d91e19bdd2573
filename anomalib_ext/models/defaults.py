"""What every model of the package configures the same way.

- :func:`default_evaluator`: the test metrics every model and the benchmark harness report, all
  anomalib metrics: image AUROC, F1-max and average precision (AP), anomalib's thresholded image and
  pixel F1 (its default evaluator's metrics), pixel AUROC, F1-max and AP, and the papers' PRO, which
  is anomalib's ``AUPRO`` up to a false-positive rate of 0.3 (anomalib's ``PRO`` metric is something
  else).
- :func:`reject_normalize`: models that corrupt images in [0, 1] pixel space (damage, Perlin textures)
  must not receive normalised images from the pre-processor.

Example:
    >>> from anomalib_ext.models.defaults import default_evaluator
    >>> [metric.name for metric in default_evaluator().test_metrics][:3]
    ['image_AUROC', 'image_F1Max', 'image_AUPR']
"""

from __future__ import annotations

from collections.abc import Sequence

from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.metrics import AUPR, AUPRO, AUROC, AnomalibMetric, Evaluator, F1Max, F1Score
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Normalize

IMAGE_FIELDS = ["pred_score", "gt_label"]
PIXEL_FIELDS = ["anomaly_map", "gt_mask"]

#: Threshold-free test metrics (names as the evaluator logs them): they rank raw scores, so they need no
#: validation pass and no normalisation statistics.
RANKING_METRICS = (
    "image_AUROC",
    "image_F1Max",
    "image_AUPR",
    "pixel_AUROC",
    "pixel_F1Max",
    "pixel_AUPR",
    "pixel_AUPRO",
)
#: Metrics of labels and masks thresholded by the post-processor (thresholds found on the validation set).
THRESHOLDED_METRICS = ("image_F1Score", "pixel_F1Score")


def default_evaluator(fpr_limit: float = 0.3, val_metrics: Sequence[AnomalibMetric] | None = None) -> Evaluator:
    """The package's test metrics: image and pixel AUROC, F1-max, AP and F1; AUPRO up to ``fpr_limit``.

    Pixel metrics are built with ``strict=False``: on a dataset without masks (ELPV, classification
    datasets) they are skipped and the evaluator reports no value for them, instead of computing them
    on empty masks.

    AUROC and AP (anomalib's ``AUPR``, the step-wise average precision, the same quantity as
    torchmetrics' ``BinaryAveragePrecision``) are built with ``normalization=None``: by default
    torchmetrics passes scores outside [0, 1] through a sigmoid, which in float32 rounds every raw
    score above about 17 to exactly 1 and turns them into ties. ``F1Max`` and ``AUPRO`` never
    normalise. The metrics are exact (every distinct score is a threshold): on 600 maps of 256 x 256
    pixels each pixel metric takes 12 to 19 s of one CPU core to compute and about 2.6 GiB (AUPRO 3.7
    GiB) at its peak, whereas torchmetrics' binned variant (``thresholds=1000``) spends 130 s updating.

    Args:
        fpr_limit: Upper false-positive-rate limit of the PRO curve (0.3 in the papers).
        val_metrics: Metrics computed on validation (none by default, as in anomalib).

    Returns:
        The evaluator for ``AnomalibModule.configure_evaluator``.
    """
    test_metrics = [
        AUROC(fields=IMAGE_FIELDS, prefix="image_", normalization=None),
        F1Max(fields=IMAGE_FIELDS, prefix="image_"),
        AUPR(fields=IMAGE_FIELDS, prefix="image_", normalization=None),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=PIXEL_FIELDS, prefix="pixel_", strict=False, normalization=None),
        F1Max(fields=PIXEL_FIELDS, prefix="pixel_", strict=False),
        AUPR(fields=PIXEL_FIELDS, prefix="pixel_", strict=False, normalization=None),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=PIXEL_FIELDS, prefix="pixel_", strict=False, fpr_limit=fpr_limit),
    ]
    return Evaluator(val_metrics=list(val_metrics or []), test_metrics=test_metrics)


#: The former name of :func:`default_evaluator`, kept while the models' call sites move to it.
pro_evaluator = default_evaluator


def reject_normalize(pre_processor: PreProcessor | bool | None, reason: str) -> None:
    """Raise ``ValueError`` (with ``reason``) when the pre-processor's transform normalises images."""
    if isinstance(pre_processor, PreProcessor) and extract_transforms_by_type(pre_processor.transform, Normalize):
        msg = f"{reason} Remove Normalize from the pre-processor transforms."
        raise ValueError(msg)
