"""Unit tests of the N2N reconstruction network (spec sections 2.1, 3 and 10.1-10.5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomalib_ext.models.n2n.components import SKFF, N2NReconstructionNetwork, PSDown, PSUp, ResidualAttentionModule


def _shapes_by_hook(net: N2NReconstructionNetwork, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in net.named_modules():
        if name.count(".") == 1 and name.split(".")[0] in {"enc", "down", "up", "skip", "dec", "side"}:
            module.register_forward_hook(lambda _m, _i, out, n=name: shapes.__setitem__(n, tuple(out.shape)))
    net.bottom_conv.register_forward_hook(lambda _m, _i, out: shapes.__setitem__("bottom_conv", tuple(out.shape)))
    net.skff.register_forward_hook(lambda _m, _i, out: shapes.__setitem__("skff", tuple(out.shape)))
    net(x)
    return shapes


@pytest.mark.parametrize("channels", [8, 16])
def test_intermediate_shapes_follow_the_shape_table(channels: int) -> None:
    """Section 3 at a small input: level i has 2^i C channels at H / 2^i; side outputs have C."""
    c, size, batch = channels, 32, 2
    net = N2NReconstructionNetwork(base_channels=c)
    shapes = _shapes_by_hook(net, torch.randn(batch, 3, size, size))
    for i in range(4):
        assert shapes[f"enc.{i}"] == (batch, 2**i * c, size // 2**i, size // 2**i)
    for i in range(3):
        assert shapes[f"down.{i}"] == (batch, 2**i * c, size // 2 ** (i + 1), size // 2 ** (i + 1))
    assert shapes["bottom_conv"] == (batch, c, size // 8, size // 8)
    for k, level in enumerate([2, 1, 0]):  # decoder levels D-2 ... 0
        expected = (batch, 2**level * c, size // 2**level, size // 2**level)
        assert shapes[f"up.{k}"] == expected
        assert shapes[f"skip.{k}"] == expected
        assert shapes[f"dec.{k}"] == expected
        assert shapes[f"side.{k}"] == (batch, c, size // 2**level, size // 2**level)
    assert shapes["skff"] == (batch, c, size, size)


@pytest.mark.parametrize("batch", [1, 2])
def test_network_maps_input_to_same_shape(batch: int) -> None:
    net = N2NReconstructionNetwork(base_channels=16)
    assert net(torch.randn(batch, 3, 64, 48)).shape == (batch, 3, 64, 48)


@pytest.mark.parametrize(
    ("channels", "use_ram", "expected"),
    [
        (64, True, 10_463_796),
        (32, True, 2_619_036),
        (16, True, 656_596),
        (96, True, 23_534_284),
        (64, False, 2_128_772),
        (32, False, 533_828),
    ],
)
def test_parameter_counts_match_spec(channels: int, use_ram: bool, expected: int) -> None:
    net = N2NReconstructionNetwork(base_channels=channels, use_residual_attention=use_ram)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_odd_width_is_rejected() -> None:
    with pytest.raises(ValueError, match="base_channels"):
        N2NReconstructionNetwork(base_channels=15)


def test_skff_weights_sum_to_one_and_equal_inputs_pass_through() -> None:
    skff = SKFF(16, height=4, reduction=8)
    feats = [torch.randn(2, 16, 8, 8) for _ in range(4)]
    weights = skff.stream_weights(feats)
    assert weights.shape == (2, 4, 16, 1, 1)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 16, 1, 1))
    same = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(skff([same] * 4), same, atol=1e-6, rtol=0)


def test_input_pyramid_avg_pool_equals_bilinear_half() -> None:
    x = torch.randn(2, 3, 64, 64)
    bilinear = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    assert (F.avg_pool2d(x, 2) - bilinear).abs().max() < 1e-6


def test_ram_shape_and_residual_path_when_body_is_zero() -> None:
    ram = ResidualAttentionModule(24, 40, reduction=8)
    x = torch.randn(2, 24, 16, 16)
    assert ram(x).shape == (2, 40, 16, 16)
    last = ram.body[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    torch.testing.assert_close(ram(x), ram.proj(x))


def test_pixel_shuffle_resizing_shapes() -> None:
    assert PSDown(8, 12)(torch.randn(1, 8, 16, 16)).shape == (1, 12, 8, 8)
    assert PSUp(16, 12)(torch.randn(1, 16, 8, 8)).shape == (1, 12, 16, 16)


def test_input_unshuffle_runs_the_m_net_on_folded_blocks_at_half_resolution() -> None:
    # Speed option (not in the paper): 2x2 pixel blocks folded into 12 channels, M-net at H/2,
    # output unfolded to full resolution; the global residual adds the full-resolution input.
    c, size = 8, 32
    net = N2NReconstructionNetwork(base_channels=c, input_unshuffle=2)
    shapes = _shapes_by_hook(net, torch.randn(2, 3, size, size))
    assert shapes["enc.0"] == (2, c, size // 2, size // 2)
    assert shapes["skff"] == (2, c, size // 2, size // 2)
    assert net.stems[0].in_channels == 12
    assert net.head.out_channels == 12
    x = torch.randn(2, 3, size, size)
    assert net(x).shape == x.shape
    torch.nn.init.zeros_(net.head.weight)
    torch.nn.init.zeros_(net.head.bias)
    torch.testing.assert_close(net(x), x)  # a zero head leaves exactly the full-resolution global residual
    # parameters: only the stem's inputs and the head's outputs grow (x4)
    paper = N2NReconstructionNetwork(base_channels=16)
    folded = N2NReconstructionNetwork(base_channels=16, input_unshuffle=2)
    extra = (12 - 3) * 16 * 9 + (12 - 3) * (16 * 9 + 1)
    assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for p in paper.parameters()) + extra


def test_input_unshuffle_checks() -> None:
    from anomalib_ext.models.n2n.torch_model import N2NModel

    with pytest.raises(ValueError, match="input_unshuffle"):
        N2NReconstructionNetwork(base_channels=8, input_unshuffle=0)
    with pytest.raises(ValueError, match=r"input_unshuffle \* 2 \*\* \(depth - 1\) = 16"):
        N2NModel(image_size=(40, 40), base_channels=8, input_unshuffle=2)
    N2NModel(image_size=(48, 48), base_channels=8, input_unshuffle=2)
