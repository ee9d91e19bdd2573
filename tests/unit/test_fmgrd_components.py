"""Tests of ``anomalib_ext.models.fmgrd.components`` and its anomaly map (spec sections 2.1, 3, 10)."""

from __future__ import annotations

import pytest
import torch

from anomalib_ext.models.fmgrd.components import (
    BasicBlockDecoder,
    ChannelReconstructionUnit,
    FeatureMaskGeneration,
    MultiScaleFeatureFusion,
    OneClassEmbedding,
    SCSAtt,
    SimAM,
    SpatialReconstructionUnit,
)
from anomalib_ext.models.fmgrd.config import AttentionConfig


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def teacher_features(batch: int, channels: tuple[int, int, int], size: int) -> list[torch.Tensor]:
    """Fake teacher maps at strides 4, 8, 16 of a ``size`` input."""
    gen = torch.Generator().manual_seed(0)
    return [
        torch.rand(batch, c, size // s, size // s, generator=gen) for c, s in zip(channels, (4, 8, 16), strict=True)
    ]


@pytest.mark.parametrize("batch", [1, 2])
def test_msff_brings_every_level_to_the_last_grid_and_fuses_to_c3(batch):
    channels, size = (64, 128, 256), 64  # ResNet-18 widths
    msff = MultiScaleFeatureFusion(channels)
    out = msff(teacher_features(batch, channels, size))
    assert out.shape == (batch, 256, size // 16, size // 16)
    assert n_params(msff) == 861_952  # spec section 3, ResNet-18 column


def test_msff_without_fuse_conv_concatenates_and_subsets_build_only_their_branches():
    channels = (24, 40, 112)
    feats = teacher_features(2, channels, 64)
    assert MultiScaleFeatureFusion(channels, fusion_channels=0)(feats).shape == (2, 3 * 112, 4, 4)
    subset = MultiScaleFeatureFusion(channels, fusion_levels=(1, 2))
    assert subset.down1 is None
    assert subset(feats).shape == (2, 112, 4, 4)
    with pytest.raises(ValueError, match="fusion_levels"):
        MultiScaleFeatureFusion(channels, fusion_levels=(0, 3))


def test_sru_hard_gate_keeps_the_channel_sum_exactly():
    x = torch.randn(2, 16, 5, 5)
    sru = SpatialReconstructionUnit(16, group_num=4, gate_mode="hard")
    torch.testing.assert_close(sru(x).sum(dim=1), x.sum(dim=1))


def test_sru_soft_gates_lie_in_unit_interval_and_bad_channels_are_rejected():
    sru = SpatialReconstructionUnit(8, group_num=4)
    out = sru(torch.randn(1, 8, 4, 4))
    assert out.shape == (1, 8, 4, 4)
    normed = sru.norm(torch.randn(1, 8, 4, 4))
    r = torch.sigmoid(normed * (sru.norm.weight / sru.norm.weight.sum()).view(1, -1, 1, 1))
    w1 = torch.where(r > 0.5, torch.ones_like(r), r)
    assert ((w1 >= 0) & (w1 <= 1)).all()
    with pytest.raises(ValueError, match="even"):
        SpatialReconstructionUnit(7, group_num=1)
    with pytest.raises(ValueError, match="sru_group_num"):
        SpatialReconstructionUnit(6, group_num=4)


def test_cru_shapes_and_parameter_count_at_wrn_width():
    cru = ChannelReconstructionUnit(1024)
    assert n_params(cru) == 1_901_568  # spec section 10.2
    small = ChannelReconstructionUnit(112)
    y1, y2 = small.branches(torch.randn(2, 112, 4, 4))
    assert y1.shape == y2.shape == (2, 112, 4, 4)
    assert small.point_conv_lower.out_channels == 84  # spec section 8 table
    with pytest.raises(ValueError, match="cru_groups"):
        ChannelReconstructionUnit(12, squeeze_ratio=2, groups=4)


def test_cru_branch_softmax_is_a_convex_combination(monkeypatch):
    cru = ChannelReconstructionUnit(16)
    x = torch.randn(2, 16, 4, 4)
    y1, _ = cru.branches(x)
    monkeypatch.setattr(cru, "branches", lambda _x: (y1, y1.clone()))  # Y1 == Y2 -> output == Y1
    torch.testing.assert_close(cru(x), y1)


def test_simam_matches_the_hand_computed_example_and_survives_a_1x1_map():
    x = torch.tensor([[[[0.0, 0.0], [0.0, 4.0]]]])
    # mean 1, squared deviations (1,1,1,9), var = 12/3 = 4; 1/e = 9/(4*(4+1e-4)) + 0.5
    expected = 4.0 * torch.sigmoid(torch.tensor(9.0 / (4 * (4 + 1e-4)) + 0.5))
    torch.testing.assert_close(SimAM()(x), torch.tensor([[[[0.0, 0.0], [0.0, float(expected)]]]]))
    assert float(expected) == pytest.approx(2.972661, abs=1e-5)
    out = SimAM()(torch.randn(2, 3, 1, 1))
    assert torch.isfinite(out).all()


def test_scsatt_keeps_shape_and_counts_match_the_spec():
    att = SCSAtt(1024, AttentionConfig())
    assert n_params(att) == 2_954_240
    assert n_params(att.pointwise) == 1_050_624
    assert SCSAtt(112, AttentionConfig())(torch.randn(2, 112, 4, 4)).shape == (2, 112, 4, 4)
    assert n_params(SCSAtt(112, AttentionConfig())) == 35_840
    ablated = SCSAtt(112, AttentionConfig(use_scconv=False, use_simam=False, pointwise=False))
    x = torch.randn(2, 112, 4, 4)
    torch.testing.assert_close(ablated(x), x)


def test_oce_halves_the_grid_and_wide_width_is_rd_original():
    oce = OneClassEmbedding(1024, 2048, "bottleneck", 3, width_per_group=128)
    assert n_params(oce) == 41_971_712
    assert oce.layers[0].conv2.weight.shape == (1024, 1024, 3, 3)  # anomalib's OCBE has (512, 512, 3, 3)
    assert n_params(OneClassEmbedding(1024, 2048, "bottleneck", 3, width_per_group=64)) == 14_964_736
    basic = OneClassEmbedding(112, 320, "basic", 2)
    assert basic(torch.randn(2, 112, 4, 4)).shape == (2, 320, 2, 2)


def test_basic_block_decoder_mirrors_the_teacher_levels():
    decoder = BasicBlockDecoder(320, (24, 40, 112))
    outs = decoder(torch.randn(2, 320, 8, 8))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 64, 64), (2, 40, 32, 32), (2, 112, 16, 16)]
    assert n_params(decoder) == 729_440  # spec section 8


def test_fmm_eval_is_deterministic_and_equal_to_train_without_mask():
    fmm = FeatureMaskGeneration(8, 8)
    x = torch.randn(2, 8, 6, 6)
    fmm.eval()
    torch.testing.assert_close(fmm(x), fmm(x))
    eval_out = fmm(x)
    fmm.train()
    torch.testing.assert_close(fmm(x, mask_ratio=0.0), eval_out)
    assert not torch.allclose(fmm(x, mask_ratio=0.65), eval_out)


def test_fmm_masks_the_stated_fraction_of_positions_in_every_channel():
    fmm = FeatureMaskGeneration(4, 4).train()
    seen = {}
    fmm.generator[0].register_forward_pre_hook(lambda _m, inputs: seen.setdefault("x", inputs[0].clone()))
    x = torch.randn(16, 4, 64, 64).abs() + 0.1
    with torch.no_grad():
        aligned = fmm.align(x)
        fmm(x, mask_ratio=0.65, generator=torch.Generator().manual_seed(0))
    zero = seen["x"] == 0
    masked = zero.all(dim=1)  # a masked position is zero in every channel
    assert abs(masked.float().mean().item() - 0.65) < 0.01
    torch.testing.assert_close(seen["x"][~zero], aligned[~zero])
    assert (zero.any(dim=1) == masked).all()


def test_fmm_mask_is_reproducible_from_a_generator():
    features = torch.ones(2, 3, 8, 8)
    a = FeatureMaskGeneration.draw_mask(features, 0.5, generator=torch.Generator().manual_seed(1))
    b = FeatureMaskGeneration.draw_mask(features, 0.5, generator=torch.Generator().manual_seed(1))
    c = FeatureMaskGeneration.draw_mask(features, 0.5, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 1, 8, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert FeatureMaskGeneration.draw_mask(features, 0.5, "channel").shape == (2, 3, 1, 1)
