# Copyright (C) 2026 anomalib-ext developers
# SPDX-License-Identifier: Apache-2.0

"""DemoTextures: a small MVTec-layout dataset built offline from scikit-image's texture photos.

On first use (``prepare_data``) the datamodule writes, into a cache folder, one MVTec AD category
per texture photograph shipped with scikit-image (``brick``, ``grass``, ``gravel``): normal
crops for training and testing, and defective test crops with exact masks made by
:mod:`anomalib_ext.data.demo_defects` (scratches, cracks, stains, holes, foreign material,
swirl deformations). Nothing is downloaded; a category builds in about a second, and the same
seed and options give byte-identical files.

Each crop is a random ``source_crop`` x ``source_crop`` window of the 512x512 photograph with
random horizontal/vertical flips (no rotation: brick courses stay horizontal), resized to
``image_size``. Train and test crops come from the same photograph, as MVTec's images come from
the same production line; the defect generator differs from every training-time augmentation of
the package's models, so no model is tested on its own training corruption.

The folder is then read by anomalib's own ``MVTecAD`` machinery, so every anomalib model and
callback works on it unchanged.

Example:
    >>> from anomalib_ext.data import DemoTextures
    >>> datamodule = DemoTextures(category="brick")  # doctest: +SKIP
    >>> datamodule.prepare_data()  # builds ./datasets/demo_textures/brick once  # doctest: +SKIP

    From the CLI::

        anomalib train --model Padim --data DemoTextures --data.category grass

See Also:
    :mod:`anomalib_ext.data.demo_defects`: the defect generator.
    :class:`anomalib.data.MVTecAD`: the reader.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from anomalib.data import MVTecAD
from anomalib.data.utils import TestSplitMode, ValSplitMode
from anomalib.utils.path import resolve_dataset_root
from PIL import Image
from torchvision.transforms.v2 import Transform

from anomalib_ext.data.demo_defects import DEFECT_KINDS, SurfaceDefectGenerator

logger = logging.getLogger(__name__)

CATEGORIES = ("brick", "grass", "gravel")
# Photographs used as foreign material: the other textures and the lunar surface.
DONORS = ("brick", "grass", "gravel", "moon")
MANIFEST = "demo_textures.json"
BUILD_VERSION = 1
PHOTO_SIZE = 512


def _photo(name: str) -> np.ndarray:
    """A scikit-image photograph (installed with the package, never downloaded) as uint8 gray."""
    from skimage import data

    photo = getattr(data, name)()
    if photo.ndim == 3:
        photo = (photo[..., :3] @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
    return photo


def _crop(photo: np.ndarray, rng: np.random.Generator, source_crop: int, image_size: int) -> np.ndarray:
    """A random flipped window of ``photo`` resized to ``image_size``, float64 in [0, 1]."""
    top = int(rng.integers(0, photo.shape[0] - source_crop + 1))
    left = int(rng.integers(0, photo.shape[1] - source_crop + 1))
    window = photo[top : top + source_crop, left : left + source_crop]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    if rng.random() < 0.5:
        window = window[::-1, :]
    if source_crop != image_size:
        resized = Image.fromarray(np.ascontiguousarray(window)).resize((image_size, image_size), Image.Resampling.BOX)
        window = np.asarray(resized)
    return window.astype(np.float64) / 255.0


def _write_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 grayscale PNG with fixed settings (no metadata), so bytes depend on pixels only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path, format="PNG", optimize=False, compress_level=6)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def build_demo_textures(
    root: str | Path,
    category: str = "brick",
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 20,
    source_crop: int = 256,
    force: bool = False,
) -> Path:
    """Build one DemoTextures category in MVTec AD layout under ``root/category`` (if not built yet).

    The layout is ``train/good/NNN.png``, ``test/good/NNN.png``, ``test/<kind>/NNN.png`` and
    ``ground_truth/<kind>/NNN_mask.png`` with defect kinds cycling through ``DEFECT_KINDS``. A
    ``demo_textures.json`` manifest records the options; a folder built with other options is
    rebuilt. The build goes to a temporary folder renamed into place, so an interrupted build
    never leaves a half-written category.

    Args:
        root: Folder receiving the category folder.
        category: One of ``CATEGORIES``.
        seed: Seed of the build: the same seed and options write byte-identical files.
        image_size: Side of the square images written (32 to 512).
        n_train: Normal training images.
        n_test_good: Normal test images.
        n_test_defect: Defective test images, each with an exact mask.
        source_crop: Side of the window cut from the 512x512 photograph before resizing.
        force: Rebuild even if a matching build is present.

    Returns:
        The category folder.

    Raises:
        ValueError: If ``category`` or a size is invalid.
        FileExistsError: If ``root/category`` exists but was not built by this function.
    """
    if category not in CATEGORIES:
        msg = f"Unknown DemoTextures category {category!r}; valid categories: {', '.join(CATEGORIES)}."
        raise ValueError(msg)
    if not 32 <= image_size <= PHOTO_SIZE:
        msg = f"image_size must be in [32, {PHOTO_SIZE}], got {image_size}"
        raise ValueError(msg)
    if not 32 <= source_crop <= PHOTO_SIZE:
        msg = f"source_crop must be in [32, {PHOTO_SIZE}], got {source_crop}"
        raise ValueError(msg)
    if min(n_train, n_test_good, n_test_defect) < 1:
        msg = f"n_train, n_test_good and n_test_defect must be >= 1, got {n_train}, {n_test_good}, {n_test_defect}"
        raise ValueError(msg)

    root = Path(root)
    target = root / category
    options = {
        "version": BUILD_VERSION,
        "category": category,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
        "source_crop": source_crop,
    }
    manifest = target / MANIFEST
    if target.exists():
        if not manifest.is_file():
            msg = f"{target} exists but is not a DemoTextures build (no {MANIFEST}); choose another root."
            raise FileExistsError(msg)
        if not force and json.loads(manifest.read_text()) == options:
            return target

    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    photo = _photo(category)
    donors = [_photo(name).astype(np.float64) / 255.0 for name in DONORS if name != category]
    generator = SurfaceDefectGenerator(donors=donors)

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".building-{category}-", dir=root))
    try:
        for i in range(n_train):
            _write_png(
                _to_uint8(_crop(photo, rng, source_crop, image_size)), staging / "train" / "good" / f"{i:03d}.png"
            )
        for i in range(n_test_good):
            _write_png(
                _to_uint8(_crop(photo, rng, source_crop, image_size)), staging / "test" / "good" / f"{i:03d}.png"
            )
        counts = dict.fromkeys(DEFECT_KINDS, 0)
        for i in range(n_test_defect):
            kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
            image, mask, _ = generator(_crop(photo, rng, source_crop, image_size), rng, kind=kind)
            stem = f"{counts[kind]:03d}"
            counts[kind] += 1
            _write_png(_to_uint8(image), staging / "test" / kind / f"{stem}.png")
            _write_png(mask.astype(np.uint8) * 255, staging / "ground_truth" / kind / f"{stem}_mask.png")
        (staging / MANIFEST).write_text(json.dumps(options, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        try:
            staging.replace(target)
        except OSError:
            # Another process (e.g. a second DDP rank) finished the same build first.
            if not (manifest.is_file() and json.loads(manifest.read_text()) == options):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built DemoTextures %s in %s", category, target)
    return target


class DemoTextures(MVTecAD):
    """Offline demo datamodule: MVTec-layout texture categories built from scikit-image photos.

    Builds its category on first use (``prepare_data``, or ``setup`` if that was skipped) into
    ``root`` and then reads it exactly like anomalib's ``MVTecAD``. See :mod:`anomalib_ext.data.demo`.

    Args:
        root: Cache folder of the built dataset. Defaults to ``"./datasets/demo_textures"``;
            ``None`` uses anomalib's datasets folder.
        category: One of ``"brick"``, ``"grass"``, ``"gravel"``. Defaults to ``"brick"``.
        train_batch_size: Training batch size. Defaults to ``32``.
        eval_batch_size: Evaluation batch size. Defaults to ``32``.
        num_workers: Dataloader workers. Defaults to ``4``.
        train_augmentations: Augmentations of the training images. Defaults to ``None``.
        val_augmentations: Augmentations of the validation images. Defaults to ``None``.
        test_augmentations: Augmentations of the test images. Defaults to ``None``.
        augmentations: Augmentations used where no stage-specific ones are given.
        test_split_mode: How the test set is made. Defaults to ``TestSplitMode.FROM_DIR``.
        test_split_ratio: Fraction used for testing when splitting. Defaults to ``0.2``.
        val_split_mode: How the validation set is made. Defaults to ``ValSplitMode.SAME_AS_TEST``.
        val_split_ratio: Fraction used for validation when splitting. Defaults to ``0.5``.
        seed: Seed of the train/val/test splits (anomalib's). Defaults to ``None``.
        dataset_seed: Seed of the build: same seed, same bytes. Defaults to ``0``.
        image_size: Side of the images written. Defaults to ``256``.
        n_train: Normal training images. Defaults to ``40``.
        n_test_good: Normal test images. Defaults to ``10``.
        n_test_defect: Defective test images (with exact masks). Defaults to ``20``.

    Raises:
        ValueError: If ``category`` is unknown (the message lists the valid ones).

    Example:
        >>> datamodule = DemoTextures(category="grass", image_size=128)  # doctest: +SKIP
        >>> datamodule.setup()  # doctest: +SKIP
        >>> len(datamodule.train_data), len(datamodule.test_data)  # doctest: +SKIP
        (40, 30)
    """

    def __init__(
        self,
        root: Path | str | None = "./datasets/demo_textures",
        category: str = "brick",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 4,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        dataset_seed: int = 0,
        image_size: int = 256,
        n_train: int = 40,
        n_test_good: int = 10,
        n_test_defect: int = 20,
    ) -> None:
        if category not in CATEGORIES:
            msg = f"Unknown DemoTextures category {category!r}; valid categories: {', '.join(CATEGORIES)}."
            raise ValueError(msg)
        super().__init__(
            root=resolve_dataset_root(root, "demo_textures"),
            category=category,
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
        self.dataset_seed = dataset_seed
        self.image_size = image_size
        self.n_train = n_train
        self.n_test_good = n_test_good
        self.n_test_defect = n_test_defect

    def prepare_data(self) -> None:
        """Build the category into ``root`` unless a build with the same options is there."""
        build_demo_textures(
            self.root,
            category=self.category,
            seed=self.dataset_seed,
            image_size=self.image_size,
            n_train=self.n_train,
            n_test_good=self.n_test_good,
            n_test_defect=self.n_test_defect,
        )

    def _setup(self, _stage: str | None = None) -> None:
        self.prepare_data()  # no-op when built; covers setup() called without prepare_data()
        super()._setup(_stage)


def main(argv: list[str] | None = None) -> None:
    """Build DemoTextures categories from the command line and report the time taken.

    ``python -m anomalib_ext.data.demo [--root ./datasets/demo_textures] [--seed 0] [--force]``
    """
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Build the offline DemoTextures dataset (MVTec AD layout).")
    parser.add_argument("--root", type=Path, default=Path("./datasets/demo_textures"))
    parser.add_argument("--category", choices=CATEGORIES, nargs="*", default=list(CATEGORIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build exists")
    args = parser.parse_args(argv)
    for category in args.category:
        start = time.perf_counter()
        folder = build_demo_textures(args.root, category, seed=args.seed, image_size=args.image_size, force=args.force)
        print(f"{folder}: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
