# Copyright (C) 2026 anomalib-ext developers
# SPDX-License-Identifier: Apache-2.0

"""BTAD (anomalib's ``BTech``) reading the dataset as distributed, ``.bmp`` masks included.

anomalib's ``BTech`` reads BTAD correctly *after its own download*, which converts every ``.bmp``
file to ``.png``. A manually downloaded copy keeps the original file types:

======= ======= =======
product images  masks
======= ======= =======
01      .bmp    .png
02      .png    .png
03      .bmp    .bmp
======= ======= =======

``make_btech_dataset`` always derives the mask path as ``ground_truth/ko/<stem>.png``, so every
defective image of product ``03`` points at a file that does not exist and fails when read. The
subclasses here take the mask that exists (``.png`` or ``.bmp``) and otherwise behave exactly like
anomalib's (same layout, same download in ``prepare_data`` when the folder is missing). The
upstream fix is described in ``docs/upstream.md`` ("BTech: masks of product 03").

Example:
    >>> from anomalib_ext.data import BTAD
    >>> datamodule = BTAD(root="./datasets/BTech", category="03")  # doctest: +SKIP

See Also:
    :class:`anomalib.data.BTech`, :func:`anomalib.data.datasets.image.btech.make_btech_dataset`.
"""

from __future__ import annotations

from pathlib import Path

from anomalib.data import BTech
from anomalib.data.datasets.image.btech import BTechDataset, make_btech_dataset
from anomalib.data.utils import LabelName, Split
from pandas import DataFrame
from torchvision.transforms.v2 import Transform

#: The three BTAD products.
CATEGORIES = ("01", "02", "03")

MASK_SUFFIXES = (".png", ".bmp")


def make_btad_dataset(path: str | Path, split: str | Split | None = None) -> DataFrame:
    """``make_btech_dataset`` with mask paths pointing at the mask file that exists.

    Args:
        path: Product folder (``.../BTech/03``).
        split: ``"train"``, ``"test"`` or ``None``.

    Returns:
        The samples of ``make_btech_dataset``, with ``.bmp`` masks where the copy has them.

    Raises:
        FileNotFoundError: If a defective test image has no mask under any suffix (the message
            names the image and the mask paths tried).
    """
    samples = make_btech_dataset(Path(path), split=split)
    abnormal = samples.label_index == LabelName.ABNORMAL
    fixed = []
    for image_path, mask_path in zip(samples.image_path[abnormal], samples.mask_path[abnormal], strict=True):
        candidates = [Path(mask_path).with_suffix(suffix) for suffix in MASK_SUFFIXES]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            tried = ", ".join(str(candidate) for candidate in candidates)
            msg = f"No ground-truth mask for {image_path}; tried {tried}."
            raise FileNotFoundError(msg)
        fixed.append(str(found))
    samples.loc[abnormal, "mask_path"] = fixed
    return samples


class BTADDataset(BTechDataset):
    """anomalib's ``BTechDataset`` accepting the original ``.bmp`` masks of product ``03``.

    Args:
        root: Folder holding the products ``01``, ``02``, ``03``.
        category: Product, ``"01"``, ``"02"`` or ``"03"``.
        augmentations: Augmentations applied to image and mask. Defaults to ``None``.
        split: ``"train"``, ``"test"`` or ``None``. Defaults to ``None``.
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        augmentations: Transform | None = None,
        split: str | Split | None = None,
    ) -> None:
        super().__init__(root=root, category=category, augmentations=augmentations, split=split)
        self.samples = make_btad_dataset(self.root_category, split=split)


class BTAD(BTech):
    """anomalib's ``BTech`` datamodule reading copies that keep the original ``.bmp`` files.

    Same arguments and behaviour as :class:`anomalib.data.BTech`; only the mask look-up differs, and an
    unknown ``category`` fails at construction (before anomalib would start a download).

    Raises:
        ValueError: ``category`` is not one of :data:`CATEGORIES` (the message lists them).
    """

    @property
    def category(self) -> str:
        """The BTAD product, ``"01"``, ``"02"`` or ``"03"``."""
        return self._category

    @category.setter
    def category(self, category: str) -> None:
        # anomalib's BTech.__init__ assigns self.category: checking here keeps BTech's signature for the CLI.
        if str(category) not in CATEGORIES:
            msg = f"Unknown BTAD category {category!r}; valid categories: {', '.join(CATEGORIES)} (as strings)."
            raise ValueError(msg)
        self._category = str(category)

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = BTADDataset(split=Split.TRAIN, root=self.root, category=self.category)
        self.test_data = BTADDataset(split=Split.TEST, root=self.root, category=self.category)
