"""Tests of the MLDFR loss (eqs. 4-6) on hand-computed inputs (spec section 10)."""

from __future__ import annotations

import math

import pytest
import torch

from anomalib_ext.models.mldfr.loss import MLDFRLoss

# B = 1, C = 2, L = 2 (channel x position): target y = [[1, 0], [0, 1]], restored r = [[1, 0], [1, 0]].
TARGET = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
RESTORED = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])


def test_loss_on_hand_example_is_mse_plus_lambda_times_cosine() -> None:
    # per-channel squared error (0, 2) -> mean 1.0; per-channel cosine distance (0, 1) -> mean 0.5
    expected = 1.0 + 140.0 * 0.5
    assert MLDFRLoss()(RESTORED, TARGET).item() == pytest.approx(expected)
    assert expected == 71.0


def test_loss_channel_sum_is_public_code_scale() -> None:
    assert MLDFRLoss(channel_reduction="sum")(RESTORED, TARGET).item() == pytest.approx(2.0 + 140.0 * 1.0)


def test_loss_channel_axis_cosine_per_token() -> None:
    # per-position cosine across channels: position 0: r=(1,1), y=(1,0) -> 1/sqrt2; position 1: r=(0,0) -> 0
    direction = ((1 - 1 / math.sqrt(2)) + 1.0) / 2
    expected = 1.0 + 140.0 * direction
    assert MLDFRLoss(cosine_axis="channel")(RESTORED, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(91.5025, abs=1e-4)


def test_loss_is_not_torch_mse_loss() -> None:
    # F.mse_loss averages over positions too: 0.5 here, L = 2 times smaller than eq. 4's 1.0 (trap T11)
    loss = MLDFRLoss(loss_lambda=0.0)(RESTORED, TARGET).item()
    assert loss == pytest.approx(1.0)
    assert torch.nn.functional.mse_loss(RESTORED, TARGET).item() == pytest.approx(0.5)


def test_loss_without_mse_is_lambda_times_cosine() -> None:
    assert MLDFRLoss(use_mse=False)(RESTORED, TARGET).item() == pytest.approx(70.0)


def test_identical_features_give_zero_loss() -> None:
    features = torch.rand(3, 5, 4, 4) + 0.1  # no all-zero channel
    assert MLDFRLoss()(features, features.clone()).item() == pytest.approx(0.0, abs=1e-5)


def test_known_offset_gives_known_loss() -> None:
    target = torch.ones(2, 4, 3, 3)
    restored = target + 0.5  # same direction: cosine distance 0; squared error 9 * 0.25 per channel
    assert MLDFRLoss()(restored, target).item() == pytest.approx(9 * 0.25, rel=1e-6)


def test_all_zero_target_channel_gives_finite_loss_of_at_least_lambda_over_c() -> None:
    target = torch.rand(1, 4, 3, 3) + 0.1
    target[:, 0] = 0.0
    loss = MLDFRLoss()(target.clone(), target)
    assert torch.isfinite(loss)
    assert loss.item() >= 140.0 / 4 - 1e-4


def test_loss_options_reject_unknown_values() -> None:
    from anomalib_ext.models.mldfr.config import TrainingConfig

    with pytest.raises(ValueError, match="channel_reduction"):
        TrainingConfig(channel_reduction="max")
    with pytest.raises(ValueError, match="cosine_axis"):
        TrainingConfig(cosine_axis="time")
