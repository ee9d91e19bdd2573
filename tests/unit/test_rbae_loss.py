"""RB-AE losses on hand-computed inputs (spec section 10, items 13-16)."""

import math

import pytest
import torch
from torch import nn

from anomalib_ext.models.rbae.loss import (
    FeatureRepairLoss,
    FocalLoss,
    PerceptualLoss,
    PixelDiscriminationLoss,
    SegmentationLoss,
)


def test_pixel_dis_zero_when_residual_follows_the_mask() -> None:
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    clean = torch.zeros(1, 5, 4, 4)
    defective = 3 * mask.expand(1, 5, 4, 4)
    assert PixelDiscriminationLoss()([clean], [defective], mask).item() == pytest.approx(0.0, abs=1e-12)


def test_pixel_dis_identical_features_half_mask_gives_half() -> None:
    mask = torch.zeros(2, 1, 4, 4)
    mask[..., :, :2] = 1
    feats = torch.rand(2, 3, 4, 4)
    assert PixelDiscriminationLoss()([feats], [feats.clone()], mask).item() == pytest.approx(0.5)


def test_pixel_dis_hand_example_one_eighteenth() -> None:
    """R = [[0,1],[2,3]] (one channel, residual sqrt(R)), mask [[0,0],[1,1]] -> N(R) = R/3, loss 1/18."""
    residual = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    mask = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    loss = PixelDiscriminationLoss()([torch.zeros(1, 1, 2, 2)], [residual.sqrt()], mask)
    # ((0-0)^2 + (1/3-0)^2 + (2/3-1)^2 + (1-1)^2) / 4 = (1/9 + 1/9) / 4 = 1/18
    assert loss.item() == pytest.approx(1 / 18, rel=1e-6)


def test_pixel_dis_mask_area_resized_to_each_level() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    clean = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4)]
    defective = [2 * mask.expand(1, 2, 8, 8), 2 * mask[..., ::2, ::2].expand(1, 2, 4, 4)]
    assert PixelDiscriminationLoss()(clean, defective, mask).item() == pytest.approx(0.0, abs=1e-12)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, 2 * x]


def test_perceptual_loss_mean_of_l1_per_tap() -> None:
    target = torch.rand(1, 3, 4, 4)
    # taps x and 2x: |0.1| and |0.2| -> mean 0.15
    assert PerceptualLoss(_Identity())(target, target + 0.1).item() == pytest.approx(0.15, rel=1e-5)
    assert PerceptualLoss(_Identity())(target, target.clone()).item() == 0.0


@pytest.mark.parametrize(("denominator", "expected"), [(2.0, 1.5), (3.0, 1.0)])
def test_feature_repair_loss_literal_prefactor(denominator: float, expected: float) -> None:
    """A23: F_out - F_o == 1 on three levels -> 3 / denominator."""
    clean = [torch.rand(1, 4, s, s) for s in (8, 4, 2)]
    repaired = [c + 1 for c in clean]
    assert FeatureRepairLoss(denominator)(repaired, clean).item() == pytest.approx(expected, rel=1e-6)


def test_focal_uniform_logits() -> None:
    logits = torch.zeros(2, 2, 3, 3)
    expected = 0.25 * math.log(2)
    for target in (torch.zeros(2, 1, 3, 3), torch.ones(2, 1, 3, 3)):
        assert FocalLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_focal_known_probabilities() -> None:
    logits = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)  # p1 = 0.75
    assert FocalLoss()(logits, torch.ones(1, 1, 1, 1)).item() == pytest.approx(0.0625 * -math.log(0.75), rel=1e-5)
    assert FocalLoss()(logits, torch.ones(1, 1, 1, 1)).item() == pytest.approx(0.0179801, rel=1e-4)
    assert FocalLoss()(logits, torch.zeros(1, 1, 1, 1)).item() == pytest.approx(0.7797906, rel=1e-5)


def test_focal_penalises_anomalous_prediction_on_normal_pixels() -> None:
    """Fails for kornia FocalLoss(alpha=1) (gives 0) as anomalib's DRAEM uses it (trap T1)."""
    logits = torch.tensor([0.0, 5.0]).view(1, 2, 1, 1)
    p0 = 1 / (1 + math.exp(5))
    expected = -((1 - p0) ** 2) * math.log(p0)
    assert FocalLoss()(logits, torch.zeros(1, 1, 1, 1)).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(4.939921, rel=1e-5)


def test_segmentation_loss_averages_levels() -> None:
    logits = [torch.zeros(1, 2, s, s) for s in (8, 4, 2)]
    assert SegmentationLoss()(logits, torch.zeros(1, 1, 8, 8)).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)


def test_phase_totals_are_the_weighted_sums_of_their_terms() -> None:
    """Eq. 14 and Eq. 17 with a distinct weight and a distinct value per term (catches swapped weights)."""
    from anomalib_ext.models.rbae.config import Phase1Config, Phase2Config
    from anomalib_ext.models.rbae.loss import RbaeLoss

    loss = RbaeLoss(
        nn.Identity(),
        phase1=Phase1Config(w_rec=2.0, w_per=3.0, w_pixel_dis=5.0),
        phase2=Phase2Config(w_rec=7.0, w_per=11.0, w_fea_rep=13.0, w_seg=17.0),
    )
    loss.perceptual, loss.pixel_dis, loss.fea_rep, loss.seg = (
        _Constant(0.5),
        _Constant(0.25),
        _Constant(0.125),
        _Constant(0.0625),
    )
    clean = torch.zeros(1, 3, 4, 4)
    outputs = {  # reconstruction off by 2 everywhere: MSE 4
        "reconstruction": torch.full((1, 3, 4, 4), 2.0),
        "clean_features": [torch.zeros(1)] * 8,
        "defective_features": [torch.zeros(1)] * 8,
        "repaired_features": [],
        "logits": [],
    }
    total1, terms1 = loss.phase1(clean, torch.zeros(1, 1, 4, 4), outputs)
    assert float(total1) == pytest.approx(2 * 4 + 3 * 0.5 + 5 * 0.25)
    assert list(terms1) == ["rec", "per", "pixel_dis"]
    total2, terms2 = loss.phase2(clean, torch.zeros(1, 1, 4, 4), outputs)
    assert float(total2) == pytest.approx(7 * 4 + 11 * 0.5 + 13 * 0.125 + 17 * 0.0625)
    assert list(terms2) == ["rec", "per", "fea_rep", "seg"]


class _Constant(nn.Module):
    """A loss term that returns ``value`` whatever its inputs."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, *args: object) -> torch.Tensor:
        del args
        return torch.tensor(self.value)
