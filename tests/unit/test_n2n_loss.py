"""Unit tests of the N2N per-pixel MS-SSIM + Gaussian-L1 map and loss (spec 2.3, tests 8-15)."""

from __future__ import annotations

import pytest
import torch
from kornia.losses import MS_SSIMLoss
from kornia.metrics import ssim

from anomalib_ext.models.n2n.config import ErrorMapConfig
from anomalib_ext.models.n2n.loss import MSSSIML1Map, N2NLoss


def _double(**kwargs: object) -> MSSSIML1Map:
    return MSSSIML1Map(ErrorMapConfig(**kwargs)).double()


def test_identical_inputs_give_zero_map_and_zero_loss() -> None:
    b = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(_double()(b, b), torch.zeros(2, 1, 32, 32, dtype=torch.float64))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(N2NLoss()(x, x)) == 0.0


@pytest.mark.parametrize(("alpha", "expected"), [(0.84, None), (1.0, None), (0.0, 0.1)])
def test_constant_offset_gives_hand_computed_value(alpha: float, expected: float | None) -> None:
    """b = 0.5, a = 0.6: cs = 1, l = (2*0.5*0.6 + C1) / (0.25 + 0.36 + C1), L1 term = 0.1."""
    c1 = (0.01 * 1.0) ** 2
    lum = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)  # 0.9836092444
    if expected is None:
        expected = alpha * (1 - lum) + (1 - alpha) * 0.1  # 0.0297682347 for alpha = 0.84
    a = torch.full((1, 3, 64, 64), 0.6, dtype=torch.float64)
    b = torch.full_like(a, 0.5)
    zeros_map = _double(alpha=alpha)(a, b)
    # zero padding: exact away from the 16-px border band
    torch.testing.assert_close(
        zeros_map[..., 16:-16, 16:-16], torch.full_like(zeros_map[..., 16:-16, 16:-16], expected), atol=1e-6, rtol=0
    )
    reflect_map = _double(alpha=alpha, padding="reflect")(a, b)
    torch.testing.assert_close(reflect_map, torch.full_like(reflect_map, expected), atol=1e-6, rtol=0)


def test_known_offset_value_is_0_0297682() -> None:
    a = torch.full((1, 3, 40, 40), 0.6, dtype=torch.float64)
    b = torch.full_like(a, 0.5)
    assert abs(float(_double(padding="reflect")(a, b)[0, 0, 20, 20]) - 0.0297682347) < 1e-6


def test_single_scale_matches_kornia_ssim() -> None:
    a, b = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    ours = _double(msssim_sigmas=(1.5,), kernel_size=11, padding="reflect", alpha=1.0)(a, b)
    reference = ssim(a.float(), b.float(), 11, max_val=1.0, eps=0.0).double().mean(dim=1, keepdim=True)
    torch.testing.assert_close(1 - ours, reference, atol=5e-5, rtol=0)


def test_full_map_matches_kornia_ms_ssim_loss() -> None:
    a, b = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    reference = MS_SSIMLoss(alpha=0.84, compensation=1.0, reduction="none")(a.float(), b.float())
    torch.testing.assert_close(_double()(a, b)[:, 0].float(), reference, atol=5e-5, rtol=0)


def test_channel_permutation_and_symmetry_invariance() -> None:
    metric = _double()
    a, b = torch.rand(1, 3, 32, 32, dtype=torch.float64), torch.rand(1, 3, 32, 32, dtype=torch.float64)
    perm = [2, 0, 1]
    torch.testing.assert_close(metric(a[:, perm], b[:, perm]), metric(a, b))
    torch.testing.assert_close(metric(b, a), metric(a, b))


def test_locality_outside_kernel_radius() -> None:
    metric = _double()
    b = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    a = b.clone()
    a[..., 24:32, 24:40] = 1.0 - a[..., 24:32, 24:40]
    error = metric(a, b)[0, 0]
    assert error[24:32, 24:40].min() > 0
    far = torch.ones_like(error, dtype=torch.bool)
    far[24 - 16 : 32 + 16, 24 - 16 : 40 + 16] = False
    assert error[far].abs().max() <= 1e-6


def test_map_range() -> None:
    a, b = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    error = _double()(a, b)
    assert error.min() >= 0
    assert error.max() <= 0.84 * 2 + 0.16 * (a - b).abs().max()


def test_loss_maps_normalised_inputs_to_unit_space() -> None:
    """N2NLoss on normalised inputs == the map on [0, 1] inputs (v * 0.5 + 0.5)."""
    x_hat, x0 = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    loss = N2NLoss()
    expected = MSSSIML1Map()(0.5 * x_hat + 0.5, 0.5 * x0 + 0.5).mean()
    torch.testing.assert_close(loss(x_hat, x0), expected)


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="msssim_sigmas"):
        MSSSIML1Map(ErrorMapConfig(msssim_sigmas=(2.0, 1.0)))
    with pytest.raises(ValueError, match=r"error_map\.kernel_size=32 is invalid"):
        MSSSIML1Map(ErrorMapConfig(kernel_size=32))
