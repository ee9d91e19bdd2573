"""Tests of ``anomalib_ext.augment.perlin`` (RB-AE Perlin-shaped texture defects)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from anomalib.data.utils.generators.perlin import generate_perlin_noise
from torchvision.io import write_jpeg, write_png

from anomalib_ext.augment import PerlinTextureAnomaly
from anomalib_ext.augment.perlin import list_texture_images, perlin_noise_from_angles

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RED, BLUE = (255, 0, 0), (0, 0, 255)


def noise_images(batch: int = 6, size: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images in (0.05, 0.95), so any pasted texture differs from the original pixel."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=gen) * 0.9 + 0.05).to(dtype)


def solid(colour: tuple[int, int, int], size: int = 20) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size).contiguous()


@pytest.fixture
def texture_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "textures"
    (folder / "sub").mkdir(parents=True)
    write_png(solid(RED), str(folder / "red.png"))
    write_png(solid(BLUE), str(folder / "sub" / "blue.PNG"))  # upper case, in a subfolder
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.parametrize(("scale", "size"), [((4, 8), (64, 64)), ((1, 32), (48, 100)), ((2, 2), (128, 128))])
def test_perlin_noise_equals_anomalib(scale, size):
    sy, sx = scale
    torch.manual_seed(0)
    reference = generate_perlin_noise(*size, scale=scale, device=torch.device("cpu"))
    torch.manual_seed(0)
    angles = torch.zeros(1, 33, 33)
    angles[0, : sy + 1, : sx + 1] = 2 * math.pi * torch.rand(sy + 1, sx + 1)
    ours = perlin_noise_from_angles(angles, torch.tensor([scale]), *size)[0]
    assert torch.allclose(ours, reference, atol=1e-6)


def test_masks_are_binary_nonempty_and_vary():
    masks, noise = PerlinTextureAnomaly(seed=0).masks(16, 64, 64)
    assert masks.shape == noise.shape == (16, 1, 64, 64)
    assert masks.dtype == torch.bool
    assert masks.flatten(1).any(1).all(), "every mask must be non-empty after the retries"
    assert torch.equal(masks, noise > 0.5)
    fractions = masks.float().mean(dim=(1, 2, 3))
    assert fractions.max() < 0.9
    assert fractions.std() > 0.01, "masks of one batch must differ"


def test_batch_texture_changes_exactly_the_mask():
    images = noise_images()
    out, mask = PerlinTextureAnomaly(texture_source="batch", seed=1)(images)
    assert mask.shape == (6, 1, 64, 64)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal((out != images).any(1, keepdim=True).to(out.dtype), mask)


def homogeneous_texture_batch(batch: int = 32, size: int = 64) -> torch.Tensor:
    """``batch`` copies of one periodic texture: another image at the same place shows the same content."""
    x = torch.linspace(0, 1, size)
    texture = 0.5 + 0.3 * torch.sin(x * 40)[None, :] * torch.cos(x * 25)[:, None]
    return texture.expand(batch, 3, size, size).clone()


def mean_change_inside_mask(out: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: mean absolute change over the masked pixels."""
    change = (out - images).abs().mean(1, keepdim=True) * mask
    return change.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


@pytest.mark.parametrize("augment_texture", [True, False])
def test_default_offline_defects_are_foreign_and_visible(augment_texture):
    """Without a texture folder every defect changes what it covers (no same-texture cut-paste, issue 15).

    The former default pasted another image of the batch at the same place: on a homogeneous texture
    all 32 defects were invisible without the 3 random ops, and 1 in 32 with them.
    """
    images = homogeneous_texture_batch()
    anomaly = PerlinTextureAnomaly(augment_texture=augment_texture, seed=0)
    out, mask = anomaly(images)
    assert bool((mask.flatten(1).amax(1) > 0).all())
    assert mean_change_inside_mask(out, images, mask).min() > 0.05


def test_batch_texture_on_a_homogeneous_texture_can_be_invisible():
    """Documents why ``"batch"`` is no longer the default (module docstring)."""
    images = homogeneous_texture_batch()
    out, mask = PerlinTextureAnomaly(texture_source="batch", augment_texture=False, seed=0)(images)
    assert mean_change_inside_mask(out, images, mask).max() < 1e-6


def test_batch_texture_comes_from_another_image_of_the_batch():
    colours = torch.linspace(0.1, 0.9, 4)
    images = colours.view(4, 1, 1, 1).expand(4, 3, 32, 32).clone()
    out, mask = PerlinTextureAnomaly(texture_source="batch", augment_texture=False, seed=2)(images)
    for index in range(4):
        pasted = out[index][:, mask[index, 0].bool()].unique()
        assert len(pasted) == 1
        assert pasted.item() in colours.tolist()
        assert pasted.item() != colours[index].item()


def test_texture_folder_is_used(texture_dir: Path):
    anomaly = PerlinTextureAnomaly(texture_dir=texture_dir, augment_texture=False, seed=3)
    assert anomaly.texture_source == "folder"
    assert [p.name for p in anomaly.texture_paths] == ["red.png", "blue.PNG"]
    images = noise_images(batch=12)
    out, mask = anomaly(images)
    seen = set()
    for image, m in zip(out, mask[:, 0].bool(), strict=True):
        inside = image[:, m].T.unique(dim=0)
        assert len(inside) == 1, "one texture per image"
        colour = tuple(round(v * 255) for v in inside[0].tolist())
        assert colour in {RED, BLUE}
        seen.add(colour)
    assert seen == {RED, BLUE}, "both texture files must be drawn"
    assert torch.equal(out * (1 - mask), images * (1 - mask))


def test_texture_folder_with_augmentation_stays_in_range(texture_dir: Path):
    images = noise_images()
    out, mask = PerlinTextureAnomaly(texture_dir=texture_dir, seed=4)(images)
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    assert torch.equal(out * (1 - mask), images * (1 - mask))


def test_uppercase_jpeg_files_are_found(tmp_path: Path):
    # anomalib's generator misses ImageNet's "*.JPEG" files (spec trap T3).
    write_jpeg(solid(RED), str(tmp_path / "n01440764_10026.JPEG"))
    assert [p.name for p in list_texture_images(tmp_path)] == ["n01440764_10026.JPEG"]


def test_texture_folder_without_images_raises_naming_it(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no images") as error:
        PerlinTextureAnomaly(texture_dir=tmp_path)
    assert str(tmp_path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing"):
        PerlinTextureAnomaly(texture_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="texture_dir"):
        PerlinTextureAnomaly(texture_source="folder")


@pytest.mark.parametrize(("given", "expected"), [(1, (1.0, 1.0)), ([0.2, 1.0], (0.2, 1.0)), (0.5, (0.5, 0.5))])
def test_blend_factor_ints_and_lists_are_coerced(given, expected):
    # anomalib silently falls back to beta = 0.5 for an int or a list (spec trap T2).
    assert PerlinTextureAnomaly(blend_factor=given).blend_factor == expected


def test_partial_blend_mixes_texture_and_image(texture_dir: Path):
    images = noise_images(batch=4)
    anomaly = PerlinTextureAnomaly(texture_dir=texture_dir, augment_texture=False, blend_factor=0.25, seed=5)
    out, mask = anomaly(images)
    m = mask.bool().expand_as(out)
    texture = (out[m] - 0.75 * images[m]) / 0.25
    is_red_or_blue = torch.isclose(texture, torch.zeros(1), atol=1e-4) | torch.isclose(
        texture, torch.ones(1), atol=1e-4
    )
    assert is_red_or_blue.all()


def test_noise_texture_source_works_offline():
    images = noise_images()
    out, mask = PerlinTextureAnomaly(texture_source="noise", seed=6)(images)
    assert mask.sum() > 0
    assert torch.equal(out * (1 - mask), images * (1 - mask))


@pytest.mark.parametrize(("probability", "expected"), [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_probability_sets_the_fraction_of_defective_images(probability, expected):
    images = noise_images(batch=64, size=32)
    out, mask = PerlinTextureAnomaly(probability=probability, augment_texture=False, seed=7)(images)
    defective = (mask.flatten(1).amax(1) > 0).float().mean().item()
    assert defective == pytest.approx(expected, abs=0.15)
    if probability == 0.0:
        assert torch.equal(out, images)


def test_seed_and_generator_make_it_reproducible(texture_dir: Path):
    images = noise_images()
    for kwargs in ({}, {"texture_dir": texture_dir}):
        first = PerlinTextureAnomaly(seed=8, **kwargs)(images)
        second = PerlinTextureAnomaly(seed=8, **kwargs)(images)
        assert torch.equal(first[0], second[0])
        assert torch.equal(first[1], second[1])
    anomaly = PerlinTextureAnomaly()
    runs = [anomaly(images, generator=torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    other = anomaly(images, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(runs[0][1], other[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtype_device_and_value_range_are_kept(dtype, device):
    images = noise_images(batch=3, size=32, dtype=dtype).to(device)
    out, mask = PerlinTextureAnomaly(seed=11)(images)
    assert out.dtype == mask.dtype == dtype
    assert out.device == mask.device == images.device
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_normalised_value_range_maps_the_textures(texture_dir: Path):
    images = noise_images() * 2 - 1
    anomaly = PerlinTextureAnomaly(texture_dir=texture_dir, augment_texture=False, value_range=(-1.0, 1.0), seed=12)
    out, mask = anomaly(images)
    inside = out.permute(0, 2, 3, 1)[mask[:, 0].bool()]
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])
    assert ((inside == red).all(1) | (inside == blue).all(1)).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"blend_factor": 1.5}, "blend_factor"),
        ({"blend_factor": (0.8, 0.2)}, "blend_factor"),
        ({"probability": -0.1}, "probability"),
        ({"texture_source": "imagenet"}, "texture_source"),
        ({"rotation_range": (90, -90)}, "rotation_range"),
        ({"perlin_scale_exponents": (-1, 5)}, "perlin_scale_exponents"),
        ({"threshold": 1.0}, "threshold"),
        ({"max_retries": -1}, "max_retries"),
        ({"value_range": (1.0, 0.0)}, "value_range"),
    ],
)
def test_nonsense_parameters_raise_a_clear_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PerlinTextureAnomaly(**kwargs)
