"""Tests of what every model configures the same way: the PRO evaluator and the pixel-space check."""

from __future__ import annotations

import pytest
import torch
from anomalib.metrics import AUPRO
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_ext.augment import rank_generator
from anomalib_ext.models.defaults import pro_evaluator, reject_normalize
from anomalib_ext.registry import registered_models


def test_pro_evaluator_adds_aupro_at_the_papers_fpr_limit() -> None:
    evaluator = pro_evaluator(fpr_limit=0.3)
    names = [metric.name for metric in evaluator.test_metrics]
    assert names == ["image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score", "pixel_AUPRO"]
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
