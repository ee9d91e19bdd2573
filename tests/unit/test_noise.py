"""Tests of ``anomalib_ext.augment.noise.NoiseBlend`` (N2N noise blending)."""

from __future__ import annotations

import math

import pytest
import torch

from anomalib_ext.augment import NoiseBlend

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images_in(low: float, high: float, batch: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * (high - low) + low


def test_paper_defaults():
    blend = NoiseBlend()
    assert (blend.noise_lambda, blend.noise_mean, blend.noise_std) == (0.3, 0.5, 0.5)
    assert blend.noise_space == "normalized"
    assert blend.clamp_range is None


def test_lambda_zero_is_the_identity_with_an_empty_mask():
    images = images_in(-1, 1)
    out, mask = NoiseBlend(noise_lambda=0.0, seed=0)(images)
    assert torch.equal(out, images)
    assert mask.shape == (4, 1, 64, 64)
    assert mask.sum() == 0


def test_mask_marks_every_changed_pixel():
    images = images_in(-1, 1)
    out, mask = NoiseBlend(seed=0)(images)
    assert torch.equal((out != images).any(1, keepdim=True).to(out.dtype), mask)
    assert torch.all(mask == 1.0)


def test_normalized_space_statistics():
    # Spec 2.2: x' - 0.7 x0 ~ N(0.15, 0.15^2) with eps ~ N(0.5, 0.5) drawn in the images' space.
    images = images_in(-1, 1)
    out, _ = NoiseBlend(noise_space="normalized", seed=1)(images)
    residual = out - 0.7 * images
    assert residual.mean().item() == pytest.approx(0.15, abs=0.005)
    assert residual.std().item() == pytest.approx(0.15, abs=0.005)


def test_pixel_space_statistics():
    # Spec 2.2: pixel-space N(0.5, 0.5) through (eps - 0.5) / 0.5 gives x' - 0.7 x0 ~ N(0, 0.3^2).
    images = images_in(-1, 1)
    out, _ = NoiseBlend(noise_space="pixel", seed=2)(images)
    residual = out - 0.7 * images
    assert residual.mean().item() == pytest.approx(0.0, abs=0.005)
    assert residual.std().item() == pytest.approx(0.3, abs=0.005)


def test_pixel_space_equals_blending_in_pixel_space_and_renormalising():
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = images_in(0, 1)
    normalised = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    blend = NoiseBlend(noise_space="pixel", norm_mean=mean.tolist(), norm_std=std.tolist())
    noise = blend.sample_noise(pixels.shape, generator=torch.Generator().manual_seed(3))
    in_pixels = 0.7 * pixels + 0.3 * noise
    expected = (in_pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(blend.blend(normalised, noise), expected, atol=1e-5)


def test_no_clipping_by_default_and_clamp_range_on_request():
    images = images_in(0, 1)
    out, _ = NoiseBlend(seed=4)(images)
    assert out.max() > 1.0, "A9: the paper does not clip"
    assert out.min() < 0.0
    clamped, _ = NoiseBlend(clamp_range=(0.0, 1.0), seed=4)(images)
    assert clamped.min() >= 0.0
    assert clamped.max() <= 1.0
    inside = (out >= 0) & (out <= 1)
    assert torch.equal(clamped[inside], out[inside])


def test_seed_and_generator_make_it_reproducible():
    images = images_in(-1, 1)
    assert torch.equal(NoiseBlend(seed=5)(images)[0], NoiseBlend(seed=5)(images)[0])
    assert not torch.equal(NoiseBlend(seed=5)(images)[0], NoiseBlend(seed=6)(images)[0])
    blend = NoiseBlend()
    runs = [blend(images, generator=torch.Generator().manual_seed(7))[0] for _ in range(2)]
    assert torch.equal(*runs)
    seeded = NoiseBlend(seed=8)
    first, second = seeded(images)[0], seeded(images)[0]
    assert not torch.equal(first, second), "training: fresh noise at every call"
    seeded.reset()
    assert torch.equal(seeded(images)[0], first)


def test_fixed_test_time_noise_is_deterministic_and_matches_a_call():
    images = images_in(-1, 1)
    blend = NoiseBlend()
    eval_noise = blend.sample_noise((1, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    expected = torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    assert torch.equal(eval_noise, expected)
    first, second = blend.blend(images, eval_noise), blend.blend(images, eval_noise)
    assert torch.equal(first, second)
    assert torch.allclose(first, 0.7 * images + 0.3 * eval_noise)
    per_image = blend.sample_noise(images.shape, generator=torch.Generator().manual_seed(9))
    called, _ = blend(images, generator=torch.Generator().manual_seed(9))
    assert torch.equal(blend.blend(images, per_image), called)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_and_device_are_kept(dtype, device):
    images = images_in(-1, 1).to(device=device, dtype=dtype)
    out, mask = NoiseBlend(seed=10)(images)
    assert out.dtype == mask.dtype == dtype
    assert out.device == mask.device == images.device
    reference, _ = NoiseBlend(seed=10)(images.double())
    tolerance = 1e-6 if dtype == torch.float64 else 2e-2
    assert torch.allclose(out.double(), reference, atol=tolerance)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise_lambda": -0.1}, "noise_lambda"),
        ({"noise_lambda": 1.5}, "noise_lambda"),
        ({"noise_lambda": math.nan}, "noise_lambda"),
        ({"noise_std": -0.5}, "noise_std"),
        ({"noise_space": "latent"}, "noise_space"),
        ({"norm_std": 0.0}, "norm_std"),
        ({"norm_std": (0.5, -0.5, 0.5)}, "norm_std"),
        ({"clamp_range": (1.0, 0.0)}, "clamp_range"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_nonsense_parameters_raise_a_clear_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NoiseBlend(**kwargs)


def test_error_message_names_value_and_range():
    with pytest.raises(ValueError, match=r"noise_lambda=1\.5 is out of range: accepted range is \[0\.0, 1\.0\]"):
        NoiseBlend(noise_lambda=1.5)
