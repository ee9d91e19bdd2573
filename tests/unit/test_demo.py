"""DemoTextures: offline deterministic build, MVTec layout, exact masks, and the defect generator."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torchvision.transforms.v2 import Resize

from anomalib_ext.data import DemoTextures
from anomalib_ext.data.demo import CATEGORIES, MANIFEST, build_demo_textures
from anomalib_ext.data.demo_defects import DEFECT_KINDS, SurfaceDefectGenerator

SMALL = {"image_size": 64, "n_train": 4, "n_test_good": 2, "n_test_defect": 6}


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_same_seed_builds_byte_identical_files(tmp_path):
    first = build_demo_textures(tmp_path / "a", "brick", seed=3, **SMALL)
    second = build_demo_textures(tmp_path / "b", "brick", seed=3, **SMALL)
    other = build_demo_textures(tmp_path / "c", "brick", seed=4, **SMALL)
    assert tree_digest(first) == tree_digest(second)
    assert tree_digest(first) != tree_digest(other)


def test_layout_counts_and_mask_names(tmp_path):
    folder = build_demo_textures(tmp_path, "gravel", **SMALL)
    assert len(list((folder / "train" / "good").glob("*.png"))) == 4
    assert len(list((folder / "test" / "good").glob("*.png"))) == 2
    defects = sorted(p for p in (folder / "test").glob("*/*.png") if p.parent.name != "good")
    assert len(defects) == 6
    assert {p.parent.name for p in defects} == set(DEFECT_KINDS)
    for image_path in defects:
        mask_path = folder / "ground_truth" / image_path.parent.name / f"{image_path.stem}_mask.png"
        image, mask = np.asarray(Image.open(image_path)), np.asarray(Image.open(mask_path))
        assert image.shape == mask.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255}
        assert (mask > 0).sum() >= 4


def test_existing_build_is_reused_and_other_options_rebuild(tmp_path):
    folder = build_demo_textures(tmp_path, "grass", **SMALL)
    stamp = (folder / MANIFEST).stat().st_mtime_ns
    build_demo_textures(tmp_path, "grass", **SMALL)
    assert (folder / MANIFEST).stat().st_mtime_ns == stamp
    build_demo_textures(tmp_path, "grass", **{**SMALL, "n_train": 5})
    assert len(list((folder / "train" / "good").glob("*.png"))) == 5
    assert not list(tmp_path.glob(".building-*"))


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "brick").mkdir()
    with pytest.raises(FileExistsError, match=str(tmp_path / "brick")):
        build_demo_textures(tmp_path, "brick", **SMALL)


def test_default_category_builds_in_seconds(tmp_path):
    start = time.perf_counter()
    folder = build_demo_textures(tmp_path, "brick")
    assert time.perf_counter() - start < 20  # ~1 s alone; generous for 2 shared cores
    assert len(list(folder.rglob("*.png"))) == 40 + 10 + 2 * 20


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defects_change_only_and_visibly_the_masked_pixels(kind):
    generator = SurfaceDefectGenerator(donors=[data.moon() / 255.0])
    image = data.gravel()[:96, :96] / 255.0
    for seed in range(5):
        defective, mask, drawn = generator(image, np.random.default_rng(seed), kind=kind)
        assert drawn == kind
        assert mask.dtype == bool
        assert mask.any()
        np.testing.assert_array_equal(defective[~mask], image[~mask])
        assert np.abs(defective - image)[mask].mean() >= 0.04
        assert defective.min() >= 0
        assert defective.max() <= 1


def test_defects_are_reproducible_from_the_generator_state():
    generator = SurfaceDefectGenerator(donors=[data.moon() / 255.0])
    image = data.brick()[:64, :64] / 255.0
    a = generator(image, np.random.default_rng(7))
    b = generator(image, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_generator_validates_its_parameters():
    with pytest.raises(ValueError, match="kinds"):
        SurfaceDefectGenerator(kinds=("square",))
    with pytest.raises(ValueError, match="donors"):
        SurfaceDefectGenerator(kinds=("foreign",))
    with pytest.raises(ValueError, match="min_visibility"):
        SurfaceDefectGenerator(kinds=("hole",), min_visibility=2.0)


def test_datamodule_builds_on_first_use_and_reads_as_mvtec(tmp_path):
    datamodule = DemoTextures(
        root=tmp_path,
        category="grass",
        train_batch_size=4,
        eval_batch_size=8,
        num_workers=0,
        augmentations=Resize((32, 32)),
        **SMALL,
    )
    datamodule.prepare_data()
    datamodule.setup()
    assert len(datamodule.train_data) == 4
    assert len(datamodule.test_data) == 8
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape == (4, 3, 32, 32)
    test_batch = next(iter(datamodule.test_dataloader()))
    assert test_batch.gt_mask.shape == (8, 32, 32)
    labels = test_batch.gt_label.bool()
    assert labels.sum() == 6
    assert torch.all(test_batch.gt_mask[labels].flatten(1).any(1))
    assert not test_batch.gt_mask[~labels].any()


def test_setup_alone_builds_the_dataset(tmp_path):
    datamodule = DemoTextures(root=tmp_path, category="brick", num_workers=0, **SMALL)
    datamodule.setup()
    item = datamodule.test_data[0]
    assert item.image.shape == (3, 64, 64)


def test_invalid_category_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=", ".join(CATEGORIES)):
        DemoTextures(root=tmp_path, category="carpet")


def test_command_line_builds_the_requested_category(tmp_path, capsys):
    from anomalib_ext.data.demo import main

    main(["--root", str(tmp_path), "--category", "gravel", "--image-size", "32"])
    assert str(tmp_path / "gravel") in capsys.readouterr().out
    assert len(list((tmp_path / "gravel" / "train" / "good").glob("*.png"))) == 40
