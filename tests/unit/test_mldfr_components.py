"""Tests of MLDFR's restorer and anomaly map: parameter counts, identities and map properties."""

from __future__ import annotations

import pytest
import torch

from anomalib_ext.models.components import AnomalyScorer
from anomalib_ext.models.mldfr.anomaly_map import AnomalyMapGenerator
from anomalib_ext.models.mldfr.restorer import FeatureRestorer, RestorationBlock


def _count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize(
    ("dim", "num_tokens", "expected"),
    [
        (736, 576, 52_510_336),  # paper: R18 + CaiT at 384 (6,510,800 per block x 8 + pos_embed)
        (368, 256, 13_137_280),  # Lite0 taps + the blocks.5.0 -> 5.3 pair at 256 (the offline pair until 2026-12-06)
        (176, 256, 3_039_616),  # offline CNN-only at 256
    ],
)
def test_restorer_parameter_count_matches_spec(dim: int, num_tokens: int, expected: int) -> None:
    # the spec's counts are for the public code's talking-heads attention (two Linear(8, 8) per block)
    assert _count(FeatureRestorer(dim=dim, num_tokens=num_tokens, num_blocks=8, attention_type="talking_heads")) == (
        expected
    )
    standard = FeatureRestorer(dim=dim, num_tokens=num_tokens, num_blocks=8, attention_type="standard")
    assert _count(standard) == expected - 8 * 2 * (8 * 8 + 8)


def test_restorer_keeps_the_feature_map_shape() -> None:
    restorer = FeatureRestorer(dim=64, num_tokens=16, num_blocks=2)
    features = torch.rand(3, 64, 4, 4)
    assert restorer(features).shape == features.shape
    assert isinstance(restorer.output_projection, torch.nn.Identity)


def test_restorer_maps_to_a_wider_target() -> None:
    # the offline pair blocks.5.0 -> blocks.6.0: 368 input channels, 496 target channels
    restorer = FeatureRestorer(dim=368, num_tokens=16, num_blocks=1, out_dim=496)
    assert restorer(torch.rand(2, 368, 4, 4)).shape == (2, 496, 4, 4)
    assert _count(restorer.output_projection) == 368 * 496 + 496


def test_restorer_is_identity_plus_pos_embed_when_branches_are_zeroed() -> None:
    restorer = FeatureRestorer(dim=32, num_tokens=9, num_blocks=2)
    with torch.no_grad():
        for block in restorer.blocks:
            block.gamma_ffn.zero_()
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
    features = torch.rand(2, 32, 3, 3)
    pos = restorer.pos_embed.detach().transpose(1, 2).reshape(1, 32, 3, 3)
    torch.testing.assert_close(restorer(features), features + pos)
    with torch.no_grad():
        restorer.pos_embed.zero_()
    torch.testing.assert_close(restorer(features), features)


def test_layer_scale_on_attention_adds_one_gamma_per_block() -> None:
    base = FeatureRestorer(dim=32, num_tokens=4, num_blocks=8)
    both = FeatureRestorer(dim=32, num_tokens=4, num_blocks=8, layer_scale_on_attention=True)
    assert _count(both) - _count(base) == 8 * 32


def test_mlp_only_block_has_no_attention() -> None:
    block = RestorationBlock(32, attention_type="none", layer_scale=False)
    assert block.attn is None
    assert block.gamma_ffn is None
    assert block(torch.rand(2, 5, 32)).shape == (2, 5, 32)


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        RestorationBlock(30, num_heads=8)


def _smoothed_map(input_size: tuple[int, int], sigma: float):
    """The model's map path: eq. 8 upsampled (AnomalyMapGenerator), then the shared Gaussian smoothing."""
    generator, scorer = AnomalyMapGenerator(input_size=input_size), AnomalyScorer(sigma=sigma)
    return lambda restored, target: scorer(generator(restored, target)).anomaly_map


def test_map_and_score_are_zero_when_restoration_is_perfect() -> None:
    generator = _smoothed_map((64, 64), sigma=4.0)
    features = torch.rand(2, 8, 4, 4)
    anomaly_map = generator(features, features.clone())
    assert anomaly_map.shape == (2, 1, 64, 64)
    assert torch.count_nonzero(anomaly_map) == 0


def test_map_before_upsampling_is_channel_sum_of_squared_error() -> None:
    generator = AnomalyMapGenerator(input_size=(1, 2))
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).view(1, 2, 1, 2)  # (C=2) x (L=2) as a 1 x 2 grid
    restored = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]).view(1, 2, 1, 2)
    torch.testing.assert_close(generator(restored, target), torch.tensor([[[[1.0, 1.0]]]]))


def test_constant_error_stays_constant_after_upsampling_and_blur() -> None:
    generator = _smoothed_map((64, 64), sigma=4.0)
    target = torch.zeros(1, 3, 4, 4)
    restored = torch.full((1, 3, 4, 4), 0.5)
    anomaly_map = generator(restored, target)
    torch.testing.assert_close(anomaly_map, torch.full_like(anomaly_map, 0.75), atol=1e-5, rtol=1e-5)


def test_single_wrong_token_peaks_inside_its_cell() -> None:
    generator = _smoothed_map((64, 64), sigma=4.0)
    target = torch.zeros(1, 4, 4, 4)
    restored = target.clone()
    restored[0, :, 1, 2] = 1.0  # token (row 1, col 2) -> pixels rows 16..31, cols 32..47
    anomaly_map = generator(restored, target)
    assert (anomaly_map >= 0).all()
    row, col = divmod(int(anomaly_map.flatten().argmax()), 64)
    assert 16 <= row < 32
    assert 32 <= col < 48


def test_sum_then_upsample_equals_upsample_then_sum() -> None:
    generator = AnomalyMapGenerator(input_size=(32, 32))
    restored, target = torch.rand(1, 5, 4, 4), torch.rand(1, 5, 4, 4)
    per_channel = torch.nn.functional.interpolate((restored - target) ** 2, size=(32, 32), mode="bilinear")
    torch.testing.assert_close(generator(restored, target), per_channel.sum(1, keepdim=True), atol=1e-5, rtol=1e-5)


def test_paper_smoothing_kernel_is_65_for_sigma_8() -> None:
    blur = AnomalyScorer(sigma=8.0).blur
    assert blur.kernel.shape[-1] == 65  # the 1-D kernel of the separable blur
