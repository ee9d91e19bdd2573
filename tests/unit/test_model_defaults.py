"""Tests of what every model configures the same way: the evaluator and the pixel-space check."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPRO
from anomalib.pre_processing import PreProcessor
from torchmetrics.classification import BinaryAveragePrecision
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_ext.augment import rank_generator
from anomalib_ext.models.defaults import RANKING_METRICS, default_evaluator, reject_normalize
from anomalib_ext.registry import registered_models


def _computed(evaluator, batches) -> dict[str, float | None]:
    values = {}
    for metric in evaluator.test_metrics:
        for batch in batches:
            metric.update(batch)
        value = metric.compute()
        values[metric.name] = None if value is None else float(value)
    return values


def _batch(scores, labels, maps=None, masks=None) -> ImageBatch:
    scores = torch.as_tensor(scores, dtype=torch.float32)
    return ImageBatch(
        image=torch.zeros(len(scores), 3, 8, 8),
        pred_score=scores,
        pred_label=scores > scores.median(),
        gt_label=torch.as_tensor(labels),
        anomaly_map=maps,
        gt_mask=masks,
        pred_mask=None if maps is None else maps > 0.5,
    )


def test_default_evaluator_reports_auroc_f1max_ap_and_aupro_at_the_papers_fpr_limit() -> None:
    evaluator = default_evaluator(fpr_limit=0.3)
    names = [metric.name for metric in evaluator.test_metrics]
    assert names == [
        "image_AUROC",
        "image_F1Max",
        "image_AUPR",
        "image_F1Score",
        "pixel_AUROC",
        "pixel_F1Max",
        "pixel_AUPR",
        "pixel_F1Score",
        "pixel_AUPRO",
    ]
    assert set(RANKING_METRICS) <= set(names)
    aupro = evaluator.test_metrics[-1]
    assert isinstance(aupro, AUPRO)
    assert aupro.fpr_limit == pytest.approx(0.3)
    assert len(evaluator.val_metrics) == 0


@pytest.mark.parametrize("name", sorted(registered_models()))
def test_every_model_reports_the_papers_pro(name: str) -> None:
    evaluator = registered_models()[name].configure_evaluator()
    aupro = [metric for metric in evaluator.test_metrics if isinstance(metric, AUPRO)]
    assert len(aupro) == 1
    assert aupro[0].fpr_limit == pytest.approx(0.3)


def test_raw_scores_above_the_sigmoid_range_do_not_tie() -> None:
    # torchmetrics' default sigmoid rounds every score above ~17 to 1.0 in float32: AUROC would be 0.5.
    scores = [20.0, 21.0, 22.0, 30.0, 40.0, 50.0]
    labels = [0, 1, 0, 1, 0, 1]
    raw = _computed(default_evaluator(), [_batch(scores, labels)])
    scaled = _computed(default_evaluator(), [_batch([s / 100 for s in scores], labels)])
    for name in ("image_AUROC", "image_F1Max", "image_AUPR"):
        assert raw[name] == pytest.approx(scaled[name]), name
    assert raw["image_AUROC"] == pytest.approx(6 / 9)


def test_average_precision_is_torchmetrics_binary_average_precision() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = (torch.rand(200, generator=generator) * 10).round() / 10  # ties included
    labels = (torch.rand(200, generator=generator) < scores * 0.8).long()
    values = _computed(default_evaluator(), [_batch(scores[:120], labels[:120]), _batch(scores[120:], labels[120:])])
    reference = BinaryAveragePrecision()
    reference.update(scores, labels)
    assert values["image_AUPR"] == pytest.approx(float(reference.compute()), abs=1e-6)


def test_pixel_metrics_rank_maps_and_are_skipped_without_masks() -> None:
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[2:, 4:10, 4:10] = True
    maps = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.5 + masks * 0.6
    with_masks = _computed(default_evaluator(), [_batch([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], maps, masks)])
    for name in ("pixel_AUROC", "pixel_F1Max", "pixel_AUPR", "pixel_AUPRO"):
        assert with_masks[name] == pytest.approx(1.0), name

    without = _computed(default_evaluator(), [_batch([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], maps, None)])
    assert [name for name, value in without.items() if value is None] == [
        "pixel_AUROC",
        "pixel_F1Max",
        "pixel_AUPR",
        "pixel_F1Score",
        "pixel_AUPRO",
    ]
    assert without["image_AUROC"] == pytest.approx(1.0)


def test_reject_normalize_names_the_reason() -> None:
    normalising = PreProcessor(transform=Compose([Resize((8, 8)), Normalize(mean=[0.5] * 3, std=[0.5] * 3)]))
    with pytest.raises(ValueError, match=r"pixel space\. Remove Normalize"):
        reject_normalize(normalising, "Damage works in pixel space.")
    reject_normalize(PreProcessor(transform=Compose([Resize((8, 8))])), "unused")
    reject_normalize(True, "unused")


def test_rank_generator_differs_between_ranks_and_repeats_per_rank() -> None:
    draws = [torch.rand(4, generator=rank_generator(7, rank)) for rank in (0, 1, 0)]
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws[0], draws[2])


def test_rank_generator_without_seed_follows_the_global_seed() -> None:
    torch.manual_seed(123)
    first = torch.rand(3, generator=rank_generator(None, 0))
    torch.manual_seed(123)
    assert torch.equal(first, torch.rand(3, generator=rank_generator(None, 0)))


@pytest.mark.parametrize("name", ["FMGRD", "MLDFR", "RBAE", "SMCC"])  # N2N has no pretrained network
def test_pre_trained_models_carry_the_packaged_weights(name: str) -> None:
    """Built with ``pre_trained=True``, the model holds the packaged ImageNet Lite0 stem, not a random one."""
    from anomalib_ext import backbones
    from tests.helpers.tiny import build

    stem = backbones.packaged_state_dict("efficientnet_lite0")["conv_stem.weight"]
    model = build(name, pre_trained=True)
    stems = [tensor for tensor in model.state_dict().values() if tensor.shape == stem.shape]
    assert stems, f"{name} has no EfficientNet-Lite0 stem"
    assert all(torch.equal(tensor, stem) for tensor in stems)
