"""anomalib's MPDD and BTech (BTAD) over faithful fake copies of the real layouts, never downloading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.data import MPDD, BTech
from anomalib.data.datamodules.image import btech as btech_module
from torchvision.transforms.v2 import Resize

from anomalib_ext.data import BTAD, make_btad_dataset
from tests.helpers.datasets import BTAD_SUFFIXES, make_fake_btad, make_fake_mpdd


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"download attempted: {args} {kwargs}")

    monkeypatch.setattr(btech_module, "download_and_extract", fail)


def check_batches(datamodule, n_train: int, n_test: int, n_defect: int) -> None:
    datamodule.prepare_data()  # finds the data: no download (the fixture fails if it tries)
    datamodule.setup()
    assert len(datamodule.train_data) == n_train
    assert len(datamodule.test_data) == n_test
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape[1:] == (3, 32, 32)  # transforms applied, 3 channels
    test = next(iter(datamodule.test_dataloader()))
    labels = test.gt_label.bool()
    assert labels.sum() == n_defect
    assert test.gt_mask.shape == (n_test, 32, 32)
    assert torch.all(test.gt_mask[labels].flatten(1).any(1))
    assert not test.gt_mask[~labels].any()
    # masks aligned: the fake defect is painted at one grey value exactly where the mask is set
    for image, mask in zip(test.image[labels], test.gt_mask[labels], strict=True):
        inside = image[0][mask.bool()]
        outside = image[0][~mask.bool()]
        assert (inside.mean() - outside.mean()).abs() > 0.2


def loader_options() -> dict:
    return {"train_batch_size": 4, "eval_batch_size": 16, "num_workers": 0, "augmentations": Resize((32, 32))}


def test_anomalib_mpdd_reads_the_real_layout(tmp_path):
    root = make_fake_mpdd(tmp_path / "MPDD", category="tubes")
    datamodule = MPDD(root=root, category="tubes", **loader_options())
    check_batches(datamodule, n_train=6, n_test=7, n_defect=4)
    test = datamodule.test_data.samples
    for image_path, mask_path in zip(test.image_path, test.mask_path, strict=True):
        if mask_path:
            image, mask = Path(image_path), Path(mask_path)
            assert mask.parent.name == image.parent.name
            assert mask.name == f"{image.stem}_mask.png"


@pytest.mark.parametrize("category", ["01", "02"])
def test_anomalib_btech_reads_products_with_png_masks(tmp_path, category):
    root = make_fake_btad(tmp_path / "BTech", category=category)
    check_batches(BTech(root=root, category=category, **loader_options()), n_train=6, n_test=6, n_defect=3)


def test_anomalib_btech_misses_the_bmp_masks_of_product_03(tmp_path):
    """Upstream bug (docs/upstream.md): masks are assumed .png; product 03 ships .bmp masks."""
    root = make_fake_btad(tmp_path / "BTech", category="03")
    datamodule = BTech(root=root, category="03", **loader_options())
    datamodule.setup()
    with pytest.raises(FileNotFoundError, match=r"ground_truth/ko/\d{4}\.png"):
        next(iter(datamodule.test_dataloader()))


@pytest.mark.parametrize("category", sorted(BTAD_SUFFIXES))
def test_btad_reads_every_product_as_distributed(tmp_path, category):
    root = make_fake_btad(tmp_path / "BTech", category=category)
    check_batches(BTAD(root=root, category=category, **loader_options()), n_train=6, n_test=6, n_defect=3)


def test_btad_reads_anomalibs_converted_copy(tmp_path):
    root = make_fake_btad(tmp_path / "BTech", category="03", suffixes=(".png", ".png"))
    check_batches(BTAD(root=root, category="03", **loader_options()), n_train=6, n_test=6, n_defect=3)


def test_btad_missing_mask_is_reported_with_its_path(tmp_path):
    root = make_fake_btad(tmp_path / "BTech", category="03")
    mask = next((root / "03" / "ground_truth" / "ko").glob("*.bmp"))
    mask.unlink()
    with pytest.raises(FileNotFoundError, match=mask.stem) as info:
        make_btad_dataset(root / "03", split="test")
    assert str(mask) in str(info.value)


def test_missing_mpdd_folder_gives_instructions(tmp_path):
    with pytest.raises(RuntimeError, match="manual download") as info:
        MPDD(root=tmp_path / "MPDD", category="tubes").prepare_data()
    assert str(tmp_path / "MPDD") in str(info.value)


@pytest.mark.parametrize("category", ["04", "1", 3])
def test_btad_unknown_category_names_the_valid_ones_before_any_download(tmp_path, monkeypatch, category):
    def no_download(*_args, **_kwargs):
        pytest.fail("BTAD started a download for an unknown category")

    monkeypatch.setattr(btech_module, "download_and_extract", no_download, raising=False)
    with pytest.raises(ValueError, match=r"Unknown BTAD category .*valid categories: 01, 02, 03"):
        BTAD(root=tmp_path / "missing", category=category)
