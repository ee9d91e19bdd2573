"""ELPV datamodule on a fake copy written by the tests: splits, thresholds, no masks, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from anomalib import TaskType
from anomalib.data.utils import LabelName

from anomalib_ext.data import ELPV, ELPVDataset, make_elpv_dataset
from anomalib_ext.data import elpv as elpv_module
from anomalib_ext.data.elpv import ELPVDatasetError
from tests.helpers.datasets import make_fake_elpv

# (p=0, p=1/3, p=2/3, p=1) cells per type, as in make_fake_elpv's default.
COUNTS = {"mono": (20, 2, 3, 5), "poly": (12, 1, 2, 4)}


@pytest.fixture(scope="module")
def elpv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_elpv(tmp_path_factory.mktemp("elpv"), counts=COUNTS)


def probabilities(root: Path) -> dict[str, float]:
    """image path -> probability, read from the fake labels.csv independently of the datamodule."""
    rows = (line.split() for line in (root / "labels.csv").read_text().splitlines())
    return {str(root / path): float(probability) for path, probability, _ in rows}


def datamodule(root: Path, **kwargs) -> ELPV:
    dm = ELPV(root=root, train_batch_size=4, eval_batch_size=4, num_workers=0, **kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize("category", ["mono", "poly"])
def test_split_sizes_follow_train_ratio_and_threshold(elpv_root: Path, category: str) -> None:
    functional, _, _, defective = COUNTS[category]
    dm = datamodule(elpv_root, category=category)
    train, test = dm.train_data.samples, dm.test_data.samples
    n_train = round(0.75 * functional)
    assert len(train) == n_train
    assert (test.label_index == LabelName.NORMAL).sum() == functional - n_train
    assert (test.label_index == LabelName.ABNORMAL).sum() == defective


def test_train_holds_only_functional_cells_of_the_category(elpv_root: Path) -> None:
    dm = datamodule(elpv_root, category="poly")
    probability = probabilities(elpv_root)
    assert all(probability[path] == 0.0 for path in dm.train_data.samples.image_path)
    assert set(dm.train_data.samples.label_index) == {LabelName.NORMAL}
    mono = set(make_elpv_dataset(elpv_root, "mono").image_path)
    assert not mono & (set(dm.train_data.samples.image_path) | set(dm.test_data.samples.image_path))


def test_train_and_test_normal_cells_are_disjoint_and_cover_all_functional_cells(elpv_root: Path) -> None:
    dm = datamodule(elpv_root, category="mono")
    train = set(dm.train_data.samples.image_path)
    test_normal = set(dm.test_data.samples.image_path[dm.test_data.samples.label_index == LabelName.NORMAL])
    functional = {p for p, v in probabilities(elpv_root).items() if v == 0.0}
    mono = set(make_elpv_dataset(elpv_root, "mono").image_path)
    assert not train & test_normal
    assert train | test_normal == functional & mono


def test_split_is_reproducible_for_a_seed_and_changes_with_it(elpv_root: Path) -> None:
    first = make_elpv_dataset(elpv_root, "mono", split="train", split_seed=3)
    again = make_elpv_dataset(elpv_root, "mono", split="train", split_seed=3)
    other = make_elpv_dataset(elpv_root, "mono", split="train", split_seed=4)
    assert list(first.image_path) == list(again.image_path)
    assert set(first.image_path) != set(other.image_path)
    assert len(first) == len(other)


@pytest.mark.parametrize(
    ("threshold", "included"),
    [(1.0, {1.0}), (2 / 3, {2 / 3, 1.0}), (0.67, {2 / 3, 1.0}), (1 / 3, {1 / 3, 2 / 3, 1.0})],
)
def test_defect_threshold_selects_the_defective_cells(elpv_root: Path, threshold: float, included: set) -> None:
    dm = datamodule(elpv_root, category="mono", defect_threshold=threshold)
    probability = probabilities(elpv_root)
    test = dm.test_data.samples
    defective = test[test.label_index == LabelName.ABNORMAL]
    assert {probability[path] for path in defective.image_path} == included
    expected = sum(n for p, n in zip((0.0, 1 / 3, 2 / 3, 1.0), COUNTS["mono"], strict=True) if p in included)
    assert len(defective) == expected


@pytest.mark.parametrize("threshold", [1.0, 2 / 3])
def test_cells_between_zero_and_the_threshold_are_left_out(elpv_root: Path, threshold: float) -> None:
    samples = make_elpv_dataset(elpv_root, "mono", defect_threshold=threshold)
    in_between = {p for p, v in probabilities(elpv_root).items() if 0.0 < v < threshold - 1e-6}
    assert in_between  # the fake copy has such cells
    assert not in_between & set(samples.image_path)


def test_classification_task_without_masks_and_three_channel_images(elpv_root: Path) -> None:
    dm = datamodule(elpv_root, category="mono")
    assert dm.test_data.task == TaskType.CLASSIFICATION
    abnormal = int((dm.test_data.samples.label_index == LabelName.ABNORMAL).to_numpy().argmax())
    item = dm.test_data[abnormal]
    assert item.gt_mask is None
    assert item.gt_label == 1
    assert item.image.shape == (3, 32, 32)
    batch = next(iter(dm.test_dataloader()))
    assert batch.gt_mask is None


def test_engine_test_reports_image_metrics_and_skips_pixel_metrics(elpv_root: Path, tmp_path: Path) -> None:
    from anomalib.engine import Engine
    from anomalib.models import Padim

    from anomalib_ext.models.defaults import pro_evaluator

    torch.manual_seed(0)
    model = Padim(
        backbone="efficientnet_lite0",
        layers=["blocks.1", "blocks.2"],
        pre_trained=False,
        n_features=16,
        pre_processor=Padim.configure_pre_processor(image_size=(32, 32)),
        evaluator=pro_evaluator(),  # the package's evaluator: pixel AUROC, pixel F1 and AUPRO included
        visualizer=False,
    )
    dm = ELPV(root=elpv_root, category="mono", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        engine.fit(model, datamodule=dm)
        metrics = engine.test(model, datamodule=dm)[0]
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    assert "image_F1Score" in metrics
    assert not [key for key in metrics if key.startswith("pixel_")]
    pixel_warnings = [str(w.message) for w in record if "mask" in str(w.message).lower()]
    assert not pixel_warnings


def test_dataset_class_reads_the_same_split(elpv_root: Path) -> None:
    dataset = ELPVDataset(root=elpv_root, category="poly", split="test", defect_threshold=2 / 3)
    assert len(dataset) == len(make_elpv_dataset(elpv_root, "poly", split="test", defect_threshold=2 / 3))


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"category": "thin_film"}, ["thin_film", "mono", "poly"]),
        ({"defect_threshold": 0.5}, ["defect_threshold=0.5", "2/3"]),
        ({"defect_threshold": 0.7}, ["defect_threshold=0.7", "within 0.01"]),
        ({"defect_threshold": 0.0}, ["defect_threshold=0.0"]),
        ({"train_ratio": 1.0}, ["train_ratio=1.0", "between 0 and 1"]),
        ({"train_ratio": 0.0}, ["train_ratio=0.0"]),
    ],
)
def test_bad_arguments_are_refused_with_the_accepted_values(tmp_path: Path, kwargs: dict, words: list) -> None:
    with pytest.raises(ValueError) as info:
        ELPV(root=tmp_path, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ELPVDatasetError, match=f"{missing}.*does not exist"):
        datamodule(missing)


def test_missing_labels_file_is_named(elpv_root: Path, tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(ELPVDatasetError, match=f"{tmp_path / 'labels.csv'} not found"):
        ELPV(root=tmp_path).prepare_data()


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("images/cell0001.png  1.0", ["labels.csv:2", "expected '<image path> <probability> <mono|poly>'"]),
        ("images/cell0001.png  high  mono", ["labels.csv:2", "'images/cell0001.png  high  mono'"]),
        ("images/cell0001.png  1.0  cigs", ["labels.csv:2", "'cigs'", "mono"]),
    ],
)
def test_malformed_row_is_named_with_its_line(tmp_path: Path, line: str, words: list) -> None:
    root = make_fake_elpv(tmp_path, counts={"mono": (2, 0, 0, 1)})
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
    with pytest.raises(ELPVDatasetError) as info:
        datamodule(root)
    for word in words:
        assert word in str(info.value)


def test_missing_image_is_named(tmp_path: Path) -> None:
    root = make_fake_elpv(tmp_path, counts={"mono": (2, 0, 0, 1)})
    image = root / "images" / "cell0002.png"
    image.unlink()
    with pytest.raises(ELPVDatasetError, match=f"labels.csv:2: image {image} does not exist"):
        datamodule(root)


def test_package_not_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = elpv_module.importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == elpv_module.PACKAGE else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(elpv_module.importlib.util, "find_spec", find_spec)
    with pytest.raises(ELPVDatasetError, match=r"pip install 'anomalib-ext\[elpv\]'"):
        ELPV(category="mono").prepare_data()
    with pytest.raises(ELPVDatasetError, match="elpv-dataset"):
        ELPVDataset(category="mono")


def test_default_root_is_the_installed_package() -> None:
    pytest.importorskip(elpv_module.PACKAGE)
    assert (elpv_module.default_root() / "labels.csv").is_file()
