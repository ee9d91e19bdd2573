"""configs/data/folder.yaml and the claims of docs/own_images.md about anomalib 2.7's ``Folder``.

Each claim the page makes about how ``Folder`` splits and pairs files is pinned here, so an anomalib
upgrade that changes one fails a test instead of leaving the page wrong.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from anomalib import TaskType
from anomalib.data import Folder
from anomalib.data.utils import LabelName

from tests.helpers.datasets import make_fake_folder

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "data" / "folder.yaml"


def config_args(root: Path, **changes) -> dict:
    """The init_args of configs/data/folder.yaml with ``root`` and test-sized loaders."""
    init_args = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    init_args.update(root=root, train_batch_size=4, eval_batch_size=4, num_workers=0, **changes)
    return init_args


def setup(**init_args) -> Folder:
    datamodule = Folder(**init_args)
    datamodule.setup()
    return datamodule


@pytest.fixture
def parts(tmp_path: Path) -> Path:
    return make_fake_folder(tmp_path / "my_parts", n_train=10, n_test_good=4, n_per_defect=3)


def labels(dataset) -> tuple[int, int]:
    samples = dataset.samples
    return int((samples.label_index == LabelName.NORMAL).sum()), int((samples.label_index == LabelName.ABNORMAL).sum())


def test_config_reads_the_recommended_layout_with_several_defect_folders(parts: Path) -> None:
    dm = setup(**config_args(parts))
    assert len(dm.train_data) == 10
    # from_test, ratio 0.5, label-aware: half of the 4 normal and 6 defective test images validate
    assert labels(dm.test_data) == (2, 3)
    assert labels(dm.val_data) == (2, 3)
    assert dm.test_data.task == TaskType.SEGMENTATION
    samples = dm.test_data.samples
    defective = samples[samples.label_index == LabelName.ABNORMAL]
    assert {Path(p).parent.name for p in defective.image_path} <= {"crack", "scratch"}
    for image, mask in zip(defective.image_path, defective.mask_path, strict=True):
        assert Path(mask).relative_to(parts / "masks") == Path(image).relative_to(parts / "test")


def test_config_split_is_seeded(parts: Path) -> None:
    first, again = setup(**config_args(parts)), setup(**config_args(parts))
    assert list(first.test_data.samples.image_path) == list(again.test_data.samples.image_path)


def test_without_masks_the_task_is_classification(parts: Path) -> None:
    args = config_args(parts)
    del args["mask_dir"]
    dm = setup(**args)
    assert dm.test_data.task == TaskType.CLASSIFICATION
    assert dm.test_data[0].gt_mask is None


def test_same_as_test_keeps_every_test_image(parts: Path) -> None:
    dm = setup(**config_args(parts, val_split_mode="same_as_test"))
    assert labels(dm.test_data) == (4, 6)
    assert labels(dm.val_data) == (4, 6)


def test_normal_split_ratio_is_ignored_and_test_split_ratio_draws_normal_test_images(parts: Path) -> None:
    args = config_args(parts, val_split_mode="same_as_test")
    del args["normal_test_dir"]
    default = setup(**args)
    assert len(default.train_data) == 8  # 20% of the 10 normal images moved to the test set
    assert labels(default.test_data) == (2, 6)
    ignored = setup(**{**args, "normal_split_ratio": 0.5})
    assert len(ignored.train_data) == 8  # anomalib 2.7.0 stores normal_split_ratio and never reads it
    used = setup(**{**args, "test_split_ratio": 0.5})
    assert len(used.train_data) == 5
    assert labels(used.test_data) == (5, 6)


def test_masks_pair_with_images_by_sorted_path_not_by_folder_name(parts: Path) -> None:
    """The trap the page warns about: mask folders must sort like the image folders."""
    (parts / "masks" / "crack").rename(parts / "masks" / "z_crack")
    (parts / "masks" / "scratch").rename(parts / "masks" / "a_scratch")
    dm = setup(
        **config_args(parts, val_split_mode="same_as_test", mask_dir=["masks/z_crack", "masks/a_scratch"]),
    )
    samples = dm.test_data.samples
    paired = zip(samples.image_path, samples.mask_path, strict=True)
    pairs = {Path(image).parent.name: Path(mask).parent.name for image, mask in paired if mask}
    assert pairs == {"crack": "a_scratch", "scratch": "z_crack"}  # silently wrong: same file names


def test_a_missing_mask_fails_without_naming_it(parts: Path) -> None:
    (parts / "masks" / "scratch" / "001.png").unlink()
    with pytest.raises(ValueError, match="cannot assign 5 input values to the 6 output values"):
        setup(**config_args(parts))


# --- errors: anomalib's own messages name the path and what it expected, so they are not wrapped ---


def test_root_that_does_not_exist_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_line"
    with pytest.raises(FileNotFoundError, match=f"Path does not exist: {missing / 'train' / 'good'}"):
        setup(**config_args(missing))


def test_empty_normal_folder_is_named_with_the_extensions_looked_for(parts: Path) -> None:
    shutil.rmtree(parts / "train" / "good")
    (parts / "train" / "good").mkdir()
    with pytest.raises(RuntimeError, match=rf"Found 0 .*NORMAL images in {parts / 'train' / 'good'} with extensions"):
        setup(**config_args(parts))


def test_images_of_other_types_are_not_found(parts: Path) -> None:
    for image in (parts / "train" / "good").iterdir():
        image.rename(image.with_suffix(".raw"))
    with pytest.raises(RuntimeError, match=r"Found 0 .*NORMAL images .*'\.png'"):
        setup(**config_args(parts))
