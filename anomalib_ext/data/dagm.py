# Copyright (C) 2026 anomalib-ext developers
# SPDX-License-Identifier: Apache-2.0

r"""DAGM 2007 dataset: dataset class, ``make_dagm_dataset`` and the ``DAGM`` datamodule.

The DAGM 2007 competition dataset ("Weakly Supervised Learning for Industrial Optical Inspection")
has ten synthetic texture classes (``Class1`` to ``Class6`` "development", ``Class7`` to
``Class10`` "competition"), each with 512x512 8-bit grayscale PNG images in ``Train`` and ``Test``
folders. Defective images carry a weak label: a coarse ELLIPSE drawn around the defect, not a
pixel-exact mask. Pixel metrics on DAGM therefore measure agreement with ellipses and
under-estimate a method that outlines the defect tightly; compare pixel scores only between
methods evaluated on the same masks.

Unsupervised protocol used here (and in the papers this package implements): train on the
defect-free images of ``Train`` only; test on every image of ``Test`` (defect-free and defective).
With ``move_defective_train_to_test=True`` the defective ``Train`` images are added to the test
set instead of being left out.

The dataset is not downloaded: it needs manual download after accepting its licence at
https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection

Expected layout (``root`` is the folder holding the class folders; a copy that nests
``ClassN/ClassN/`` is accepted too)::

    root/
    └── Class1/
        ├── Train/
        │   ├── 0576.PNG ...
        │   └── Label/
        │       ├── Labels.txt
        │       └── 0577_label.PNG ...
        └── Test/
            ├── 0001.PNG ...
            └── Label/
                ├── Labels.txt
                └── 0002_label.PNG ...

``Labels.txt`` is tab-separated with one header line; each row holds the image number, the defect
flag (0/1), the image file name, an unused column and the label file name (``0`` when there is
none), e.g. ``1\t1\t0577.PNG\t0\t0577_label.PNG``.

Example:
    >>> from anomalib_ext.data import DAGM
    >>> datamodule = DAGM(root="./datasets/DAGM", category="Class1")  # doctest: +SKIP
    >>> datamodule.prepare_data()  # doctest: +SKIP
    >>> datamodule.setup()  # doctest: +SKIP
    >>> batch = next(iter(datamodule.test_dataloader()))  # doctest: +SKIP
    >>> batch.image.shape  # doctest: +SKIP
    torch.Size([32, 3, 512, 512])

Reference:
    Wieler, M., Hahn, T.: Weakly Supervised Learning for Industrial Optical Inspection.
    DAGM 2007 competition.

See Also:
    :class:`anomalib.data.MVTecAD`, whose structure (dataset + ``make_*`` + datamodule) this follows.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode
from anomalib.utils.path import resolve_dataset_root
from pandas import DataFrame
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import Transform

logger = logging.getLogger(__name__)

CATEGORIES = tuple(f"Class{i}" for i in range(1, 11))
DOWNLOAD_URL = "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection"
IMG_EXTENSIONS = (".png", ".PNG")
LABELS_FILE = "Labels.txt"

_LAYOUT = """\
    <root>/
    └── ClassN/                 (N = 1..10; ClassN/ClassN/ is accepted too)
        ├── Train/*.PNG
        ├── Train/Label/Labels.txt and <stem>_label.PNG
        ├── Test/*.PNG
        └── Test/Label/Labels.txt and <stem>_label.PNG"""


class DAGMDatasetError(RuntimeError):
    """A DAGM folder is missing, incomplete or holds a file that cannot be read."""


def _instructions(problem: str) -> str:
    return (
        f"{problem}\n"
        "DAGM 2007 is not downloaded automatically: download it (after accepting its licence) from\n"
        f"  {DOWNLOAD_URL}\n"
        "and extract it so that the layout is:\n"
        f"{_LAYOUT}"
    )


def _validate_category(category: str) -> None:
    if category not in CATEGORIES:
        msg = f"Unknown DAGM category {category!r}; valid categories: {', '.join(CATEGORIES)}."
        raise ValueError(msg)


def _child(folder: Path, name: str) -> Path | None:
    """``folder/name`` matched case-insensitively (copies differ in ``Train``/``train``), or None."""
    exact = folder / name
    if exact.is_dir():
        return exact
    if folder.is_dir():
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name.lower() == name.lower():
                return child
    return None


def resolve_category_root(root: str | Path) -> Path:
    """Return the folder that holds ``Train`` and ``Test`` for a class folder ``root``.

    Accepts ``root/Train`` and the nested copies ``root/<root.name>/Train``.

    Args:
        root: A class folder such as ``datasets/DAGM/Class1``.

    Returns:
        The folder that holds ``Train`` and ``Test``.

    Raises:
        DAGMDatasetError: If neither layout is found; the message says where to get the data.
    """
    root = Path(root)
    for candidate in (root, root / root.name):
        if _child(candidate, "Train") is not None or _child(candidate, "Test") is not None:
            return candidate
    if not root.exists():
        problem = f"DAGM class folder not found: {root}"
    else:
        problem = f"DAGM class folder {root} has no Train/ or Test/ folder (nor {root / root.name}/Train)"
    raise DAGMDatasetError(_instructions(problem))


_IMAGE_NAME = re.compile(r"\.(png|PNG)$")


def parse_labels_file(labels_file: Path) -> list[tuple[str, bool, str | None]]:
    """Parse a DAGM ``Labels.txt`` into ``(image name, defective, label name or None)`` rows.

    Tolerant of the variants found in circulation: tab- or space-separated columns, a header
    line (``1`` or column names) or none, Windows line ends, and a missing label column (the
    label name then defaults to ``<stem>_label.PNG`` for defective images).

    Args:
        labels_file: Path of the ``Labels.txt`` file.

    Returns:
        One tuple per image row, in file order.

    Raises:
        DAGMDatasetError: If a row cannot be read; the message names the file and line.
    """
    rows: list[tuple[str, bool, str | None]] = []
    text = labels_file.read_text(encoding="utf-8", errors="replace")
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        image_index = next((i for i, field in enumerate(fields) if _IMAGE_NAME.search(field)), None)
        if image_index is None or image_index == 0:
            if not rows:  # a header line before the first row
                continue
            msg = f"Cannot read line {line_number} of {labels_file}: {line!r} (no image file name)."
            raise DAGMDatasetError(msg)
        flag = fields[image_index - 1]
        if flag not in {"0", "1"}:
            msg = f"Cannot read line {line_number} of {labels_file}: {line!r} (defect flag {flag!r} is not 0 or 1)."
            raise DAGMDatasetError(msg)
        image_name = fields[image_index]
        label_name = next((f for f in fields[image_index + 1 :] if _IMAGE_NAME.search(f)), None)
        defective = flag == "1"
        if defective and label_name is None:
            label_name = f"{Path(image_name).stem}_label{Path(image_name).suffix}"
        rows.append((image_name, defective, label_name if defective else None))
    return rows


def _read_split(split_folder: Path, split: str) -> list[tuple[str, str, str, str, int]]:
    """Rows ``(split, label, image_path, mask_path, label_index)`` of one ``Train``/``Test`` folder."""
    label_folder = _child(split_folder, "Label")
    labels_file = label_folder / LABELS_FILE if label_folder is not None else split_folder / "Label" / LABELS_FILE
    if not labels_file.is_file():
        raise DAGMDatasetError(_instructions(f"DAGM labels file not found: {labels_file}"))
    rows = parse_labels_file(labels_file)
    if not rows:
        raise DAGMDatasetError(_instructions(f"DAGM labels file lists no image: {labels_file}"))
    samples = []
    for image_name, defective, label_name in rows:
        image_path = split_folder / image_name
        if not image_path.is_file():
            msg = f"{labels_file} names an image that does not exist: {image_path}"
            raise DAGMDatasetError(_instructions(msg))
        mask_path = ""
        if defective:
            mask = labels_file.parent / str(label_name)
            if not mask.is_file():
                msg = f"{labels_file} names a label mask that does not exist: {mask}"
                raise DAGMDatasetError(_instructions(msg))
            mask_path = str(mask)
        label = "defect" if defective else "good"
        label_index = LabelName.ABNORMAL if defective else LabelName.NORMAL
        samples.append((split, label, str(image_path), mask_path, int(label_index)))
    return samples


def make_dagm_dataset(
    root: str | Path,
    split: str | Split | None = None,
    move_defective_train_to_test: bool = False,
) -> DataFrame:
    """Create DAGM 2007 samples of one class from its ``Labels.txt`` files.

    Train rows are the defect-free ``Train`` images; test rows are all ``Test`` images. Defective
    ``Train`` images are left out, or added to the test rows with ``move_defective_train_to_test``.
    Masks of defective images are the dataset's coarse ellipses (weak labels), not exact outlines.

    Args:
        root: Class folder (``.../Class1``); a nested ``Class1/Class1`` copy is accepted.
        split: ``"train"``, ``"test"`` or ``None`` for both. Defaults to ``None``.
        move_defective_train_to_test: Add the defective ``Train`` images to the test rows
            instead of dropping them. Defaults to ``False``.

    Returns:
        DataFrame with columns ``path, split, label, image_path, mask_path, label_index``
        (``mask_path`` is ``""`` for defect-free images) and ``attrs["task"] == "segmentation"``.

    Raises:
        DAGMDatasetError: If the folder, a ``Labels.txt`` or a file it names is missing.

    Example:
        >>> samples = make_dagm_dataset("./datasets/DAGM/Class1", split="test")  # doctest: +SKIP
        >>> samples.label_index.value_counts()  # doctest: +SKIP
    """
    category_root = resolve_category_root(root)
    split_folders = {name: _child(category_root, name.capitalize()) for name in ("train", "test")}
    missing = [name.capitalize() for name, folder in split_folders.items() if folder is None]
    if missing:
        problem = f"DAGM class folder {category_root} is incomplete: missing {', '.join(missing)}/"
        raise DAGMDatasetError(_instructions(problem))

    rows = []
    for split_row in _read_split(split_folders["train"], "train"):
        if split_row[4] == LabelName.NORMAL:
            rows.append(split_row)
        elif move_defective_train_to_test:
            rows.append(("test", *split_row[1:]))
    rows.extend(_read_split(split_folders["test"], "test"))

    samples = DataFrame(rows, columns=["split", "label", "image_path", "mask_path", "label_index"])
    samples.insert(0, "path", str(category_root))
    samples = samples.sort_values(by=["split", "image_path"], ignore_index=True)
    samples.attrs["task"] = "segmentation"
    if split:
        split_value = split.value if isinstance(split, Split) else split
        samples = samples[samples.split == split_value].reset_index(drop=True)
        samples.attrs["task"] = "segmentation"
    return samples


class DAGMDataset(AnomalibDataset):
    """DAGM 2007 dataset of one class.

    Images are 512x512 grayscale PNGs delivered as 3-channel float tensors (anomalib's
    ``read_image`` converts to RGB), so ImageNet backbones apply unchanged. Masks of defective
    images are coarse ellipses (weak labels), not pixel-exact outlines.

    Args:
        root: Folder holding the class folders. Defaults to ``"./datasets/DAGM"``.
        category: One of ``Class1`` ... ``Class10``. Defaults to ``"Class1"``.
        augmentations: Augmentations applied to image and mask. Defaults to ``None``.
        split: ``"train"``, ``"test"`` or ``None``. Defaults to ``None``.
        move_defective_train_to_test: Add the defective ``Train`` images to the test split
            instead of leaving them out. Defaults to ``False``.

    Raises:
        ValueError: If ``category`` is not a DAGM class (the message lists the valid ones).
        DAGMDatasetError: If the folder is missing or incomplete, or, when an item is read, if
            its image or mask cannot be decoded (the message names the file).

    Example:
        >>> dataset = DAGMDataset(root="./datasets/DAGM", category="Class1", split="test")  # doctest: +SKIP
        >>> item = dataset[0]  # doctest: +SKIP
        >>> item.image.shape, item.gt_mask.shape  # doctest: +SKIP
        (torch.Size([3, 512, 512]), torch.Size([512, 512]))
    """

    def __init__(
        self,
        root: str | Path | None = "./datasets/DAGM",
        category: str = "Class1",
        augmentations: Transform | None = None,
        split: str | Split | None = None,
        move_defective_train_to_test: bool = False,
    ) -> None:
        super().__init__(augmentations=augmentations)
        _validate_category(category)
        self.root_category = resolve_dataset_root(root, "DAGM") / category
        self.category = category
        self.split = split
        self.samples = make_dagm_dataset(
            self.root_category,
            split=split,
            move_defective_train_to_test=move_defective_train_to_test,
        )

    def __getitem__(self, index: int):  # noqa: ANN204 - anomalib's DatasetItem union
        """Read one item; a file that cannot be decoded is reported with its path."""
        try:
            return super().__getitem__(index)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            row = self.samples.iloc[index]
            culprit = row.mask_path if row.mask_path and _readable(row.image_path) else row.image_path
            msg = f"Cannot read DAGM file {culprit}: {error}"
            raise DAGMDatasetError(msg) from error


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False
    return True


class DAGM(AnomalibDataModule):
    """DAGM 2007 datamodule (one class), constructed like anomalib's ``MVTecAD``.

    Trains on the defect-free ``Train`` images and tests on all ``Test`` images. The masks are
    the dataset's coarse ellipses, not pixel-exact. Nothing is downloaded: ``prepare_data`` checks
    the folder and, if it is missing or incomplete, raises an error saying where to get the data.

    Args:
        root: Folder holding ``Class1`` ... ``Class10``. Defaults to ``"./datasets/DAGM"``.
        category: One of ``Class1`` ... ``Class10``. Defaults to ``"Class1"``.
        train_batch_size: Training batch size. Defaults to ``32``.
        eval_batch_size: Evaluation batch size. Defaults to ``32``.
        num_workers: Dataloader workers. Defaults to ``8``.
        train_augmentations: Augmentations of the training images. Defaults to ``None``.
        val_augmentations: Augmentations of the validation images. Defaults to ``None``.
        test_augmentations: Augmentations of the test images. Defaults to ``None``.
        augmentations: Augmentations used where no stage-specific ones are given.
        test_split_mode: How the test set is made. Defaults to ``TestSplitMode.FROM_DIR``.
        test_split_ratio: Fraction used for testing when splitting. Defaults to ``0.2``.
        val_split_mode: How the validation set is made. Defaults to ``ValSplitMode.SAME_AS_TEST``.
        val_split_ratio: Fraction used for validation when splitting. Defaults to ``0.5``.
        seed: Seed of the splits. Defaults to ``None``.
        move_defective_train_to_test: Add the defective ``Train`` images to the test set instead
            of leaving them out (they are never trained on). Defaults to ``False``.

    Raises:
        ValueError: If ``category`` is not a DAGM class (the message lists the valid ones).

    Example:
        >>> datamodule = DAGM(root="./datasets/DAGM", category="Class3")  # doctest: +SKIP

        From the CLI::

            anomalib train --model Padim --data anomalib_ext.data.DAGM --data.category Class3
    """

    def __init__(
        self,
        root: Path | str | None = "./datasets/DAGM",
        category: str = "Class1",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        move_defective_train_to_test: bool = False,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        _validate_category(category)
        self.root = resolve_dataset_root(root, "DAGM")
        self.category = category
        self.move_defective_train_to_test = move_defective_train_to_test

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = DAGMDataset(
            root=self.root,
            category=self.category,
            split=Split.TRAIN,
            move_defective_train_to_test=self.move_defective_train_to_test,
        )
        self.test_data = DAGMDataset(
            root=self.root,
            category=self.category,
            split=Split.TEST,
            move_defective_train_to_test=self.move_defective_train_to_test,
        )

    def prepare_data(self) -> None:
        """Check that the class folder is present and complete; never downloads.

        Raises:
            DAGMDatasetError: If the folder is missing or incomplete; the message gives the
                download page and the expected layout.
        """
        samples = make_dagm_dataset(self.root / self.category)
        logger.info("Found DAGM %s: %d samples.", self.category, len(samples))
