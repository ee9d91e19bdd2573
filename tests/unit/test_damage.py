"""Tests of ``anomalib_ext.augment.damage.RandomPatchDamage`` (MLDFR square damage)."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.components.filters.blur import GaussianBlur2d

from anomalib_ext.augment import RandomPatchDamage

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def noise_images(batch: int = 4, size: int = 48, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images in (0.05, 0.95): no pixel is 0 or 1, so every fill or blur changes every pixel it touches."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=gen) * 0.9 + 0.05).to(dtype)


def expected_damaged_fraction(size: int, side: int, num: int) -> float:
    """Exact mean coverage of ``num`` uniform ``side``-squares fully inside a ``size`` x ``size`` image."""
    pos = torch.arange(size, dtype=torch.float64)
    cover = torch.minimum(pos, torch.tensor(size - side)) - torch.clamp(pos - side + 1, min=0) + 1
    p_one = cover[:, None] * cover[None, :] / (size - side + 1) ** 2
    return float((1 - (1 - p_one) ** num).mean())


def changed(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return (out != images).any(dim=1, keepdim=True).to(out.dtype)


def test_paper_defaults_give_one_cait_patch_per_square():
    damage = RandomPatchDamage()
    assert damage.num_squares == (180, 180)
    assert damage.side_range(384) == (16, 16)
    assert damage.side_range(256) == (11, 11)
    assert damage.sigma(384) == pytest.approx(9.0)
    assert damage.modes == ("blur", "mask", "white")


def test_spec_damaged_fractions_follow_from_the_geometry():
    # Spec 2.2: 0.2666 at 384 (d = 16) and 0.2808 at 256 (d = 11), N = 180.
    assert expected_damaged_fraction(384, 16, 180) == pytest.approx(0.2666, abs=5e-4)
    assert expected_damaged_fraction(256, 11, 180) == pytest.approx(0.2808, abs=5e-4)


def test_damaged_fraction_matches_uniform_placement():
    images = noise_images(batch=16, size=128)
    _, mask = RandomPatchDamage(modes=("mask",), seed=0)(images)
    side = RandomPatchDamage().side_range(128)[0]
    assert side == 5
    assert mask.mean().item() == pytest.approx(expected_damaged_fraction(128, 5, 180), abs=0.01)


@pytest.mark.parametrize("size_range", [(4, 4), (3, 7)])
def test_single_square_is_solid_inside_image_with_side_in_range(size_range):
    lo, hi = size_range
    images = noise_images(batch=64, size=40)
    _, mask = RandomPatchDamage(num_squares=1, square_size=size_range, modes=("white",), seed=1)(images)
    sides = []
    for m in mask[:, 0]:
        rows, cols = m.any(dim=1).nonzero().squeeze(1), m.any(dim=0).nonzero().squeeze(1)
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert height == width, "a damaged region must be a square"
        assert m.sum().item() == height * width, "the square must be filled"
        sides.append(height)
    assert min(sides) >= lo
    assert max(sides) <= hi
    if hi > lo:
        assert len(set(sides)) > 1, "a side range must produce several sides"


@pytest.mark.parametrize("mode", ["blur", "mask", "white", "rgb"])
def test_mask_equals_changed_pixels(mode):
    images = noise_images()
    out, mask = RandomPatchDamage(modes=(mode,), num_squares=20, side_fraction=1 / 8, seed=2)(images)
    assert mask.shape == (4, 1, 48, 48)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(changed(out, images), mask)


def test_cutpaste_changes_only_inside_mask():
    images = noise_images()
    out, mask = RandomPatchDamage(modes=("cutpaste",), num_squares=20, side_fraction=1 / 8, seed=3)(images)
    assert torch.equal(out * (1 - mask), images * (1 - mask))
    assert changed(out, images).sum() > 0.9 * mask.sum()


def test_fill_modes_write_exact_values_and_one_mode_per_image():
    images = noise_images(batch=200, size=16)
    damage = RandomPatchDamage(modes=("mask", "white"), num_squares=4, square_size=4, seed=4)
    out, mask = damage(images)
    region = mask.bool().expand_as(out)
    black, white = [], []
    for img, reg in zip(out, region, strict=True):
        values = img[reg].unique()
        assert len(values) == 1, "all squares of one image must use the same mode"
        (black if values.item() == 0.0 else white).append(values.item())
    assert set(white) <= {1.0}
    assert len(black) / 200 == pytest.approx(0.5, abs=0.1)


def test_mode_probabilities_select_modes():
    images = noise_images(batch=32, size=16)
    out, mask = RandomPatchDamage(modes=("mask", "white"), mode_probabilities=(0.0, 1.0), seed=5)(images)
    assert torch.all(out[mask.bool().expand_as(out)] == 1.0)


def test_per_channel_fill_values_for_normalised_images():
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    black = ((0 - mean) / std).tolist()
    images = (noise_images() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    out, mask = RandomPatchDamage(modes=("mask",), mask_value=black, num_squares=10, square_size=5, seed=6)(images)
    inside = out.permute(0, 2, 3, 1)[mask[:, 0].bool()]
    assert torch.allclose(inside, torch.tensor(black).expand_as(inside))


def test_square_blur_equals_anomalib_gaussian_of_the_square_alone():
    images = noise_images(batch=2, size=64)
    damage = RandomPatchDamage(modes=("blur",), num_squares=1, square_size=12, blur_sigma=4.0, seed=7)
    out, mask = damage(images)
    blur = GaussianBlur2d(sigma=4.0, channels=3, border_type="replicate")
    for img, result, m in zip(images, out, mask[:, 0], strict=True):
        rows, cols = m.any(dim=1).nonzero().squeeze(1), m.any(dim=0).nonzero().squeeze(1)
        crop = img[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        expected = blur(crop[None])[0]
        assert torch.allclose(result[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], expected, atol=1e-5)


def test_image_scope_blur_copies_the_blurred_image():
    images = noise_images(batch=2, size=64)
    damage = RandomPatchDamage(modes=("blur",), num_squares=5, square_size=8, blur_sigma=2.0, blur_scope="image")
    out, mask = damage(images, generator=torch.Generator().manual_seed(8))
    blurred = GaussianBlur2d(sigma=2.0, channels=3, border_type="replicate")(images)
    region = mask.bool().expand_as(out)
    assert torch.allclose(out[region], blurred[region], atol=1e-6)


def test_blur_strongly_smooths_the_squares():
    # Spec section 10: on uniform noise, sigma = 9 at 384 (d = 16) divides the per-square, per-channel std by ~9
    # (mean ratio 0.11).
    images = noise_images(batch=8, size=384)
    out, mask = RandomPatchDamage(modes=("blur",), num_squares=1, seed=9)(images)
    ratios = []
    for img, result, m in zip(images, out, mask[:, 0].bool(), strict=True):
        ratios.extend((result[:, m].std(dim=1) / img[:, m].std(dim=1)).tolist())  # per channel
    assert max(ratios) < 0.35
    assert sum(ratios) / len(ratios) < 0.15


def test_grid_placement_never_overlaps():
    images = noise_images(batch=8, size=32)
    _, mask = RandomPatchDamage(placement="grid", num_squares=20, square_size=4, modes=("mask",), seed=10)(images)
    assert torch.all(mask.sum(dim=(1, 2, 3)) == 20 * 16)
    cells = mask[:, 0].unfold(1, 4, 4).unfold(2, 4, 4).mean(dim=(-1, -2))
    assert set(cells.unique().tolist()) <= {0.0, 1.0}, "squares must sit on grid cells"


def test_num_squares_range_draws_per_image_counts():
    images = noise_images(batch=64, size=32)
    damage = RandomPatchDamage(placement="grid", num_squares=(0, 3), square_size=4, modes=("white",), seed=11)
    _, mask = damage(images)
    counts = (mask.sum(dim=(1, 2, 3)) / 16).tolist()
    assert set(counts) == {0.0, 1.0, 2.0, 3.0}


@pytest.mark.parametrize("kwargs", [{"num_squares": 0}, {"probability": 0.0}])
def test_no_damage_returns_input_and_empty_mask(kwargs):
    images = noise_images()
    out, mask = RandomPatchDamage(seed=0, **kwargs)(images)
    assert torch.equal(out, images)
    assert mask.sum() == 0


def test_probability_damages_a_fraction_of_the_images():
    images = noise_images(batch=200, size=16)
    _, mask = RandomPatchDamage(probability=0.3, num_squares=5, seed=12)(images)
    assert (mask.flatten(1).amax(1) > 0).float().mean().item() == pytest.approx(0.3, abs=0.1)


def test_seed_and_generator_make_it_reproducible():
    images = noise_images()
    modes = ("blur", "mask", "white", "rgb", "cutpaste")
    first = RandomPatchDamage(modes=modes, seed=3)(images)
    second = RandomPatchDamage(modes=modes, seed=3)(images)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    other = RandomPatchDamage(modes=modes, seed=4)(images)
    assert not torch.equal(first[1], other[1])
    damage = RandomPatchDamage(modes=modes)
    with_gen = [damage(images, generator=torch.Generator().manual_seed(5))[0] for _ in range(2)]
    assert torch.equal(*with_gen)
    seeded = RandomPatchDamage(seed=6)
    call_1, call_2 = seeded(images)[1], seeded(images)[1]
    assert not torch.equal(call_1, call_2), "successive calls must draw fresh damage"
    seeded.reset()
    assert torch.equal(seeded(images)[1], call_1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtype_device_and_value_range_are_kept(dtype, device):
    images = noise_images(dtype=dtype).to(device)
    modes = ("blur", "mask", "white", "rgb", "cutpaste")
    out, mask = RandomPatchDamage(modes=modes, side_fraction=1 / 8, seed=0)(images)
    assert out.dtype == dtype
    assert mask.dtype == dtype
    assert out.device == images.device
    assert mask.device == images.device
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    assert torch.equal(out * (1 - mask), images * (1 - mask))


def test_cpu_generator_drives_any_device_identically():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    images = noise_images()
    cpu = RandomPatchDamage(modes=("mask",))(images, generator=torch.Generator().manual_seed(1))[1]
    gpu = RandomPatchDamage(modes=("mask",))(images.cuda(), generator=torch.Generator().manual_seed(1))[1]
    assert torch.equal(cpu, gpu.cpu())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_squares": -1}, "num_squares"),
        ({"num_squares": (5, 2)}, "num_squares"),
        ({"square_size": 0}, "square_size"),
        ({"square_size": -3}, "square_size"),
        ({"side_fraction": 0.0}, "side_fraction"),
        ({"side_fraction": 1.5}, "side_fraction"),
        ({"modes": ("blur", "sparkle")}, "modes"),
        ({"modes": ()}, "modes"),
        ({"mode_probabilities": (1.0,)}, "mode_probabilities"),
        ({"probability": 1.5}, "probability"),
        ({"blur_sigma": -1.0}, "blur_sigma"),
        ({"blur_kernel_size": 4}, "blur_kernel_size"),
        ({"placement": "spiral"}, "placement"),
        ({"blur_scope": "everywhere"}, "blur_scope"),
        ({"seed": -1}, "seed"),
    ],
)
def test_nonsense_parameters_raise_a_clear_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RandomPatchDamage(**kwargs)


def test_wrong_inputs_raise():
    with pytest.raises(TypeError, match="floating-point"):
        RandomPatchDamage()(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        RandomPatchDamage()(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        RandomPatchDamage(modes=("mask",), mask_value=(0.0, 0.0))(noise_images())
