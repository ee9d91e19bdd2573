"""DAGM 2007 dataset and datamodule over a fake copy in the real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import Resize

from anomalib_ext.data import DAGM, DAGMDataset, make_dagm_dataset
from anomalib_ext.data.dagm import DOWNLOAD_URL, DAGMDatasetError, parse_labels_file
from tests.helpers.datasets import make_fake_dagm


@pytest.fixture(scope="module")
def dagm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_dagm(tmp_path_factory.mktemp("dagm"), category="Class1")


def test_train_holds_only_defect_free_train_images(dagm_root):
    samples = make_dagm_dataset(dagm_root / "Class1", split="train")
    assert len(samples) == 6
    assert (samples.label_index == 0).all()
    assert all("/Train/" in p for p in samples.image_path)


def test_test_holds_all_test_images_with_masks_for_defects(dagm_root):
    samples = make_dagm_dataset(dagm_root / "Class1", split="test")
    assert len(samples) == 6
    assert (samples.label_index == 1).sum() == 3
    defective = samples[samples.label_index == 1]
    for image_path, mask_path in zip(defective.image_path, defective.mask_path, strict=True):
        assert Path(mask_path).name == Path(image_path).stem + "_label.PNG"
    assert (samples[samples.label_index == 0].mask_path == "").all()
    assert samples.attrs["task"] == "segmentation"


def test_move_defective_train_to_test_adds_them_to_test(dagm_root):
    samples = make_dagm_dataset(dagm_root / "Class1", move_defective_train_to_test=True)
    assert (samples.split == "train").sum() == 6
    test = samples[samples.split == "test"]
    assert len(test) == 8
    assert (test.label_index == 1).sum() == 5


def test_items_are_three_channel_with_aligned_masks(dagm_root):
    dataset = DAGMDataset(root=dagm_root, category="Class1", split="test")
    assert Image.open(dataset.samples.image_path[0]).mode == "L"  # grayscale on disk
    for index in range(len(dataset)):
        item = dataset[index]
        assert item.image.shape == (3, 64, 64)
        assert item.gt_mask.shape == (64, 64)
        if item.gt_label == 1:
            # the fake defect is painted at value 10 or 245 exactly where the mask is set
            gray = item.image[0]
            inside = gray[item.gt_mask.bool()]
            assert torch.allclose(inside, inside[0].expand_as(inside))
            assert item.gt_mask.sum() > 0
        else:
            assert item.gt_mask.sum() == 0


def test_nested_copy_is_found(tmp_path):
    root = make_fake_dagm(tmp_path, category="Class7", nested=True)
    assert len(DAGMDataset(root=root, category="Class7", split="train")) == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1\n1\t0\t0576.PNG\t0\t0\n2\t1\t0577.PNG\t0\t0577_label.PNG\n", 2),
        ("1\r\n1\t1\t0577.PNG\n", 1),  # no label column: defaults to <stem>_label.PNG
        ("1 0 0576.PNG 0 0\n", 1),  # space-separated, no header
    ],
)
def test_labels_parser_tolerates_variants(tmp_path, text, expected):
    labels = tmp_path / "Labels.txt"
    labels.write_text(text)
    rows = parse_labels_file(labels)
    assert len(rows) == expected
    for name, defective, label in rows:
        assert label == (f"{Path(name).stem}_label.PNG" if defective else None)


def test_labels_parser_reports_bad_line_with_path(tmp_path):
    labels = tmp_path / "Labels.txt"
    labels.write_text("1\n1\t0\t0576.PNG\t0\t0\n2\tx\t0577.PNG\t0\t0\n")
    with pytest.raises(DAGMDatasetError, match="line 3") as info:
        parse_labels_file(labels)
    assert str(labels) in str(info.value)


def test_datamodule_applies_transforms_and_batches(dagm_root):
    datamodule = DAGM(
        root=dagm_root,
        category="Class1",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        augmentations=Resize((32, 32)),
    )
    datamodule.prepare_data()
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape == (4, 3, 32, 32)
    test_batch = next(iter(datamodule.test_dataloader()))
    assert test_batch.gt_mask.shape == (4, 32, 32)
    assert len(datamodule.test_data) == 6


def test_missing_folder_says_where_to_get_it(tmp_path):
    datamodule = DAGM(root=tmp_path, category="Class2", num_workers=0)
    with pytest.raises(DAGMDatasetError) as info:
        datamodule.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "Class2") in message
    assert DOWNLOAD_URL in message
    assert "Labels.txt" in message


def test_incomplete_folder_names_the_missing_part(tmp_path):
    root = make_fake_dagm(tmp_path)
    labels = root / "Class1" / "Test" / "Label" / "Labels.txt"
    labels.unlink()
    with pytest.raises(DAGMDatasetError) as info:
        make_dagm_dataset(root / "Class1")
    assert str(labels) in str(info.value)
    assert DOWNLOAD_URL in str(info.value)


def test_labels_naming_a_missing_image_reports_its_path(tmp_path):
    root = make_fake_dagm(tmp_path)
    image = next((root / "Class1" / "Train").glob("*.PNG"))
    image.unlink()
    with pytest.raises(DAGMDatasetError) as info:
        make_dagm_dataset(root / "Class1")
    assert str(image) in str(info.value)


def test_labels_naming_a_missing_mask_reports_its_path(tmp_path):
    root = make_fake_dagm(tmp_path)
    mask = next((root / "Class1" / "Test" / "Label").glob("*_label.PNG"))
    mask.unlink()
    with pytest.raises(DAGMDatasetError) as info:
        make_dagm_dataset(root / "Class1")
    assert str(mask) in str(info.value)


def test_corrupt_image_is_reported_with_its_path(tmp_path):
    root = make_fake_dagm(tmp_path)
    dataset = DAGMDataset(root=root, category="Class1", split="train")
    corrupt = Path(dataset.samples.image_path[0])
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DAGMDatasetError) as info:
        dataset[0]
    assert str(corrupt) in str(info.value)


def test_corrupt_mask_is_reported_with_its_path(tmp_path):
    root = make_fake_dagm(tmp_path)
    dataset = DAGMDataset(root=root, category="Class1", split="test")
    index = int(np.flatnonzero(dataset.samples.label_index.to_numpy() == 1)[0])
    corrupt = Path(dataset.samples.mask_path[index])
    corrupt.write_bytes(b"not a png")
    with pytest.raises(DAGMDatasetError) as info:
        dataset[index]
    assert str(corrupt) in str(info.value)


def test_invalid_category_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="Class1, Class2") as info:
        DAGM(root=tmp_path, category="Class11")
    assert "Class10" in str(info.value)
