# Copyright (C) 2026 anomalib-ext developers
# SPDX-License-Identifier: Apache-2.0

"""ELPV: electroluminescence images of real solar cells, functional and defective.

The ELPV dataset (Buerhop-Lutz et al. 2018; Deitsch et al. 2019) holds 2,624 grayscale 300x300 px
images of single solar cells cut from electroluminescence images of 44 photovoltaic modules. Each
cell carries an expert's defect probability (0, 1/3, 2/3 or 1) and its type (``mono`` or ``poly``
crystalline). Defects are cracks, inactive and dark regions, finger interruptions: real defects on
a real production item, with the cell's own structure (busbars, grain of poly cells, the round
corners of mono cells) as the normal variation a detector has to learn.

Unsupervised protocol used here: one category per cell type. A seeded ``train_ratio`` (75%) of the
functional cells (probability 0) is the training set; the test set is the other functional cells
plus the defective cells, whose probability reaches ``defect_threshold`` (1 by default; ``2/3``
adds the "probably defective" cells). Cells in between (probability above 0 and below the
threshold) are left out. The dataset has **image-level labels only**: there are no masks, so the
datamodule's task is classification and pixel metrics (pixel AUROC, AUPRO) are skipped, not
computed on empty masks.

The data come from the PyPI package ``elpv-dataset`` (installed with ``pip install
"anomalib-ext[elpv]"``, part of ``[dev]``), so nothing is downloaded at run time; ``root`` can also
point at a copy of https://github.com/zae-bayern/elpv-dataset (a folder with ``labels.csv`` and
``images/``). Licence of the data: CC BY-NC-SA 4.0 (non-commercial use, share alike, attribution to
the authors below).

Example:
    >>> from anomalib_ext.data import ELPV
    >>> datamodule = ELPV(category="mono")  # doctest: +SKIP
    >>> datamodule.setup()  # doctest: +SKIP
    >>> len(datamodule.train_data), len(datamodule.test_data)  # doctest: +SKIP
    (441, 460)

    From the CLI::

        anomalib train --model Padim --data anomalib_ext.data.ELPV --data.category poly

References:
    Buerhop-Lutz, Deitsch, Maier, Gallwitz, Berger, Doll, Hauch, Camus, Brabec: A Benchmark for Visual
    Identification of Defective Solar Cells in Electroluminescence Imagery. EU PVSEC 2018.
    Deitsch, Christlein, Berger, Buerhop-Lutz, Maier, Gallwitz, Riess: Automatic classification of
    defective photovoltaic module cells in electroluminescence images. Solar Energy 185, 2019.
    Deitsch, Buerhop-Lutz, Sovetkin, Steland, Maier, Gallwitz, Riess: Segmentation of photovoltaic
    module cells in uncalibrated electroluminescence images. Machine Vision and Applications 32, 2021.

See Also:
    :class:`anomalib.data.Folder`, the datamodule to use for one's own images.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base import AnomalibDataset
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode
from pandas import DataFrame
from torchvision.transforms.v2 import Transform

logger = logging.getLogger(__name__)

CATEGORIES = ("mono", "poly")
PACKAGE = "elpv_dataset"
LABELS_FILE = "labels.csv"
# The four probabilities the annotators used; a threshold must be one of the defective ones.
PROBABILITIES = (0.0, 1 / 3, 2 / 3, 1.0)
# They are 1/3 apart, so a threshold written with two decimals (0.67 on a command line) names 2/3.
THRESHOLD_TOLERANCE = 0.01


class ELPVDatasetError(FileNotFoundError):
    """The ELPV files are missing or malformed; the message says what to install or where to look."""


def default_root() -> Path:
    """The data folder of the installed ``elpv-dataset`` package.

    Raises:
        ELPVDatasetError: If the package is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        msg = (
            "The ELPV data come from the PyPI package 'elpv-dataset', which is not installed: run "
            "pip install 'anomalib-ext[elpv]' (or pip install elpv-dataset), or pass root= a folder "
            f"holding {LABELS_FILE} and images/ (https://github.com/zae-bayern/elpv-dataset)."
        )
        raise ELPVDatasetError(msg)
    return Path(spec.origin).parent / "data"


def read_labels(root: str | Path) -> DataFrame:
    """The rows of ``root/labels.csv``: ``image_path`` (absolute), ``probability``, ``type``.

    Raises:
        ELPVDatasetError: If the file is missing, a row is malformed or names a missing image.
    """
    labels_file = Path(root) / LABELS_FILE
    if not Path(root).is_dir():
        msg = f"ELPV folder {Path(root)} does not exist: expected a folder holding {LABELS_FILE} and images/."
        raise ELPVDatasetError(msg)
    if not labels_file.is_file():
        msg = f"ELPV labels file {labels_file} not found: expected {LABELS_FILE} and images/ in {Path(root)}."
        raise ELPVDatasetError(msg)
    rows = []
    for number, line in enumerate(labels_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            path, probability, cell_type = fields[0], float(fields[1]), fields[2]
        except (IndexError, ValueError) as error:
            msg = f"{labels_file}:{number}: expected '<image path> <probability> <mono|poly>', got {line!r}."
            raise ELPVDatasetError(msg) from error
        if cell_type not in CATEGORIES:
            msg = f"{labels_file}:{number}: cell type {cell_type!r} is not one of {list(CATEGORIES)}."
            raise ELPVDatasetError(msg)
        image = labels_file.parent / path
        if not image.is_file():
            msg = f"{labels_file}:{number}: image {image} does not exist."
            raise ELPVDatasetError(msg)
        rows.append((str(image), probability, cell_type))
    return DataFrame(rows, columns=["image_path", "probability", "type"])


def make_elpv_dataset(
    root: str | Path,
    category: str,
    split: str | Split | None = None,
    train_ratio: float = 0.75,
    defect_threshold: float = 1.0,
    split_seed: int = 0,
) -> DataFrame:
    """Samples of one ELPV cell type in anomalib's layout (classification task, no masks).

    Args:
        root: Folder with ``labels.csv`` and ``images/``.
        category: ``"mono"`` or ``"poly"``.
        split: ``"train"``, ``"test"`` or ``None`` for both.
        train_ratio: Fraction of the functional cells used for training (seeded draw).
        defect_threshold: Smallest defect probability counted as defective (1 or 2/3).
        split_seed: Seed of the draw of the training cells (fixed, so every model sees the same split).

    Returns:
        DataFrame with columns ``path, split, label, image_path, mask_path, label_index, probability``
        and ``attrs["task"] == "classification"``.
    """
    labels = read_labels(root)
    cells = labels[labels.type == category].reset_index(drop=True)
    functional = np.flatnonzero(cells.probability.to_numpy() == 0.0)
    rng = np.random.default_rng(split_seed)
    train_index = set(rng.permutation(functional)[: round(train_ratio * len(functional))].tolist())
    rows = []
    for index, cell in cells.iterrows():
        if cell.probability == 0.0:
            split_name = Split.TRAIN.value if index in train_index else Split.TEST.value
            rows.append((split_name, "good", cell.image_path, "", int(LabelName.NORMAL), cell.probability))
        elif cell.probability >= defect_threshold - THRESHOLD_TOLERANCE:
            rows.append((Split.TEST.value, "defective", cell.image_path, "", int(LabelName.ABNORMAL), cell.probability))
    samples = DataFrame(rows, columns=["split", "label", "image_path", "mask_path", "label_index", "probability"])
    samples.insert(0, "path", str(Path(root)))
    if split is not None:
        split_value = split.value if isinstance(split, Split) else split
        samples = samples[samples.split == split_value].reset_index(drop=True)
    samples.attrs["task"] = "classification"
    return samples


def _validate(category: str, train_ratio: float, defect_threshold: float) -> None:
    if category not in CATEGORIES:
        msg = f"ELPV category {category!r} is invalid: accepted categories are {list(CATEGORIES)}."
        raise ValueError(msg)
    if not 0.0 < train_ratio < 1.0:
        msg = f"ELPV train_ratio={train_ratio} is invalid: expected a fraction strictly between 0 and 1."
        raise ValueError(msg)
    if not any(abs(defect_threshold - p) <= THRESHOLD_TOLERANCE for p in PROBABILITIES[1:]):
        msg = (
            f"ELPV defect_threshold={defect_threshold} is invalid: expected one of the annotated probabilities "
            "1/3, 2/3 or 1, within 0.01 (e.g. 0.67; a cell is defective when its probability reaches the threshold)."
        )
        raise ValueError(msg)


class ELPVDataset(AnomalibDataset):
    """ELPV cells of one type (``mono`` or ``poly``), image-level labels only.

    Images are 300x300 grayscale PNGs delivered as 3-channel float tensors (anomalib's ``read_image``),
    so ImageNet backbones apply unchanged; ``gt_mask`` is ``None`` (classification task).

    Args:
        root: Folder with ``labels.csv`` and ``images/``; ``None`` = the installed ``elpv-dataset`` package.
        category: ``"mono"`` or ``"poly"``.
        augmentations: Augmentations applied to the images.
        split: ``"train"``, ``"test"`` or ``None``.
        train_ratio: Fraction of the functional cells used for training (0.75).
        defect_threshold: Smallest defect probability counted as defective (1; 2/3 adds "probably defective").
        split_seed: Seed of the train/test draw of the functional cells (0).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        category: str = "mono",
        augmentations: Transform | None = None,
        split: str | Split | None = None,
        train_ratio: float = 0.75,
        defect_threshold: float = 1.0,
        split_seed: int = 0,
    ) -> None:
        super().__init__(augmentations=augmentations)
        _validate(category, train_ratio, defect_threshold)
        self.root = Path(root) if root is not None else default_root()
        self.category = category
        self.split = split
        self.samples = make_elpv_dataset(
            self.root,
            category,
            split=split,
            train_ratio=train_ratio,
            defect_threshold=defect_threshold,
            split_seed=split_seed,
        )


class ELPV(AnomalibDataModule):
    """ELPV datamodule: real solar-cell defects, one category per cell type, image-level labels only.

    Trains on a seeded 75% of the functional cells of the type; tests on the rest and on the
    defective cells. There are no masks: image metrics only (pixel metrics are skipped).

    Args:
        root: Folder with ``labels.csv`` and ``images/``; ``None`` (default) = the data shipped by the
            ``elpv-dataset`` package.
        category: ``"mono"`` or ``"poly"``.
        train_batch_size: Training batch size.
        eval_batch_size: Evaluation batch size.
        num_workers: Dataloader workers.
        train_augmentations: Augmentations of the training images.
        val_augmentations: Augmentations of the validation images.
        test_augmentations: Augmentations of the test images.
        augmentations: Augmentations used where no stage-specific ones are given.
        val_split_mode: How the validation set is made (``same_as_test`` as anomalib's datamodules;
            ``from_train`` keeps test images out of model selection).
        val_split_ratio: Fraction of the training (or test) images used for validation when splitting.
        train_ratio: Fraction of the functional cells used for training (0.75).
        defect_threshold: Smallest defect probability counted as defective: 1 (default) or 2/3
            (``0.67`` is read as 2/3: a value within 0.01 of an annotated probability names it).
        split_seed: Seed of the train/test draw of the functional cells; fixed so every model and
            every run sees the same split.
        seed: Seed of anomalib's validation split.

    Raises:
        ValueError: If ``category``, ``train_ratio`` or ``defect_threshold`` is invalid (the message
            lists what is accepted).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        category: str = "mono",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        train_ratio: float = 0.75,
        defect_threshold: float = 1.0,
        split_seed: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=TestSplitMode.FROM_DIR,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        _validate(category, train_ratio, defect_threshold)
        self.root = Path(root) if root is not None else None
        self.category = category
        self.train_ratio = train_ratio
        self.defect_threshold = defect_threshold
        self.split_seed = split_seed

    def _dataset(self, split: Split) -> ELPVDataset:
        return ELPVDataset(
            root=self.root,
            category=self.category,
            split=split,
            train_ratio=self.train_ratio,
            defect_threshold=self.defect_threshold,
            split_seed=self.split_seed,
        )

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = self._dataset(Split.TRAIN)
        self.test_data = self._dataset(Split.TEST)

    def prepare_data(self) -> None:
        """Check that the labels and images are there; never downloads."""
        samples = make_elpv_dataset(
            self.root if self.root is not None else default_root(),
            self.category,
            train_ratio=self.train_ratio,
            defect_threshold=self.defect_threshold,
            split_seed=self.split_seed,
        )
        counts = samples.groupby(["split", "label"]).size().to_dict()
        logger.info("ELPV %s: %s", self.category, counts)
