"""Tests of ``anomalib_ext.models.fmgrd.loss.FmgrdLoss`` (eqs. 12-13) on hand-computed inputs."""

from __future__ import annotations

import math

import pytest
import torch

from anomalib_ext.models.fmgrd.loss import FmgrdLoss


def three_levels(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, s, s, generator=gen) for c, s in ((8, 16), (16, 8), (32, 4))]


def test_identical_features_give_zero_and_opposite_give_two_per_level():
    feats = three_levels()
    loss = FmgrdLoss()
    assert float(loss(feats, feats)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(feats, [-f for f in feats])) == pytest.approx(6.0, abs=1e-6)
    assert float(loss(feats, [5.0 * f for f in feats])) == pytest.approx(0.0, abs=1e-6)  # scale invariant


def test_orthogonal_features_give_one_per_level():
    teacher = [torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(3, 2, 4, 4) for _ in range(3)]
    generated = [torch.tensor([0.0, 2.0]).view(1, 2, 1, 1).expand(3, 2, 4, 4) for _ in range(3)]
    assert float(FmgrdLoss()(teacher, generated)) == pytest.approx(3.0, abs=1e-6)


def test_pixel_and_flatten_modes_differ_as_in_the_spec_example():
    teacher = [torch.tensor([[[[1.0, 1.0]]]])]
    generated = [torch.tensor([[[[1.0, 10.0]]]])]
    assert float(FmgrdLoss("pixel")(teacher, generated)) == pytest.approx(0.0, abs=1e-7)
    assert float(FmgrdLoss("flatten")(teacher, generated)) == pytest.approx(1 - 11 / math.sqrt(202), abs=1e-6)
    assert 1 - 11 / math.sqrt(202) == pytest.approx(0.2260427, abs=1e-7)


def test_one_level_loss_is_the_mean_of_the_eq12_map():
    teacher = torch.zeros(1, 2, 2, 2)
    teacher[:, 0] = 1.0  # (1, 0) everywhere
    generated = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 2, 2)
    # per-pixel distances 0, 1, 2, 1 - 1/sqrt(2)
    expected = (0 + 1 + 2 + (1 - 1 / math.sqrt(2))) / 4
    assert expected == pytest.approx(0.8232233, abs=1e-7)
    assert float(FmgrdLoss()([teacher], [generated])) == pytest.approx(expected, abs=1e-6)


def test_total_is_the_generated_term_plus_the_weighted_decoder_term_by_value():
    teacher = [torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)]
    generated = [torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)]  # distance 1
    decoded = [torch.tensor([-1.0, 0.0]).view(1, 2, 1, 1)]  # distance 2
    assert float(FmgrdLoss()(teacher, generated, decoded)) == pytest.approx(1.0)  # decoder term off by default
    assert float(FmgrdLoss(decoder_weight=0.25)(teacher, generated, decoded)) == pytest.approx(1.0 + 0.25 * 2.0)
