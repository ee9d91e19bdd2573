"""Writers of small fake datasets in the real folder layouts, for tests.

anomalib's own test helpers are not shipped on PyPI, so the tests here make their data.
Each writer is deterministic for a seed and returns the dataset root.

Normal images are a smooth regular texture (stripes with a little noise); defects are clearly
visible dark or bright blobs and scratches whose masks are exact, so that a model trained
briefly on the normal images has something it can learn to tell apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def normal_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth striped texture in [0, 255], (size, size, 3) uint8, phase drawn from ``rng``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    period = size / 4
    base = 0.5 + 0.25 * np.sin(2 * np.pi * (xx + 0.5 * yy) / period + phase)
    noise = rng.normal(0.0, 0.02, size=(size, size))
    gray = np.clip(base + noise, 0.0, 1.0)
    tint = np.array([1.0, 0.9, 0.8], dtype=np.float32)
    return (gray[..., None] * tint * 255).astype(np.uint8)


def defect_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A boolean (size, size) mask: an ellipse or a thick scratch, away from the border."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, size=2)
    if rng.random() < 0.5:
        ry, rx = rng.uniform(0.08 * size, 0.16 * size, size=2)
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    angle = rng.uniform(0, np.pi)
    length, width = 0.25 * size, max(2.0, 0.04 * size)
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return (np.abs(along) <= length) & (np.abs(across) <= width)


def defective_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A normal texture with a dark or bright defect painted in; returns (image, bool mask)."""
    image = normal_texture(rng, size)
    mask = defect_mask(rng, size)
    value = 10 if rng.random() < 0.5 else 245
    image[mask] = value
    return image, mask


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_fake_mvtec(
    root: str | Path,
    category: str = "toy",
    n_train: int = 8,
    n_test_good: int = 4,
    n_test_defect: int = 4,
    image_size: int = 64,
    seed: int = 0,
    defect_type: str = "blob",
    mask_suffix: str = "_mask",
) -> Path:
    """Write an MVTec AD layout: ``root/category/{train/good, test/good, test/<defect>, ground_truth/<defect>}``.

    Args:
        root: Folder that receives the category folder.
        category: Category folder name.
        n_train: Number of normal training images.
        n_test_good: Number of normal test images.
        n_test_defect: Number of defective test images (each with an exact mask).
        image_size: Side of the square RGB images.
        seed: Seed of the numpy generator: the same seed writes the same files.
        defect_type: Name of the defect folder under ``test`` and ``ground_truth``.
        mask_suffix: Suffix of mask stems (MVTec/MPDD use ``_mask``).

    Returns:
        The dataset root (``root``).

    Example:
        >>> root = make_fake_mvtec(tmp_path)  # doctest: +SKIP
        >>> MVTecAD(root=root, category="toy")  # doctest: +SKIP
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    base = root / category
    for i in range(n_train):
        _save(normal_texture(rng, image_size), base / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        _save(normal_texture(rng, image_size), base / "test" / "good" / f"{i:03d}.png")
    for i in range(n_test_defect):
        image, mask = defective_image(rng, image_size)
        _save(image, base / "test" / defect_type / f"{i:03d}.png")
        _save(mask.astype(np.uint8) * 255, base / "ground_truth" / defect_type / f"{i:03d}{mask_suffix}.png")
    return root


# --- Faithful fake copies of the real MPDD, BTAD and DAGM 2007 layouts (data helper) -------------


def make_fake_mpdd(
    root: str | Path,
    category: str = "bracket_black",
    n_train: int = 6,
    n_test_good: int = 3,
    defect_types: tuple[str, ...] = ("hole", "scratches"),
    n_per_defect: int = 2,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the MPDD layout: MVTec-style, several defect folders, masks ``<stem>_mask.png``.

    ``root/category/{train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``;
    the real MPDD numbers images from ``000`` in each folder, so stems repeat across defects.

    Returns:
        The dataset root (``root``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    base = root / category
    for i in range(n_train):
        _save(normal_texture(rng, image_size), base / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        _save(normal_texture(rng, image_size), base / "test" / "good" / f"{i:03d}.png")
    for defect in defect_types:
        for i in range(n_per_defect):
            image, mask = defective_image(rng, image_size)
            _save(image, base / "test" / defect / f"{i:03d}.png")
            _save(mask.astype(np.uint8) * 255, base / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


# Real BTAD (BTech_Dataset_transformed) file types per product: (image suffix, mask suffix).
BTAD_SUFFIXES = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


def make_fake_btad(
    root: str | Path,
    category: str = "01",
    n_train: int = 6,
    n_test_good: int = 3,
    n_test_defect: int = 3,
    image_size: int = 64,
    seed: int = 0,
    suffixes: tuple[str, str] | None = None,
) -> Path:
    """Write the BTAD layout: ``root/0N/{train/ok, test/ok, test/ko, ground_truth/ko}``.

    File names are 4-digit numbers (``0000.bmp``); masks share the image stem. The image and mask
    suffixes default to the real ones of the product (``BTAD_SUFFIXES``: 01 has ``.bmp`` images
    and ``.png`` masks, 02 ``.png`` for both, 03 ``.bmp`` for both).

    Returns:
        The dataset root (``root``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    image_suffix, mask_suffix = suffixes or BTAD_SUFFIXES.get(category, (".png", ".png"))
    base = root / category
    for i in range(n_train):
        _save(normal_texture(rng, image_size), base / "train" / "ok" / f"{i:04d}{image_suffix}")
    for i in range(n_test_good):
        _save(normal_texture(rng, image_size), base / "test" / "ok" / f"{i:04d}{image_suffix}")
    for i in range(n_test_defect):
        index = n_test_good + i
        image, mask = defective_image(rng, image_size)
        _save(image, base / "test" / "ko" / f"{index:04d}{image_suffix}")
        _save(mask.astype(np.uint8) * 255, base / "ground_truth" / "ko" / f"{index:04d}{mask_suffix}")
    return root


def make_fake_dagm(
    root: str | Path,
    category: str = "Class1",
    n_train_good: int = 6,
    n_train_defect: int = 2,
    n_test_good: int = 3,
    n_test_defect: int = 3,
    image_size: int = 64,
    seed: int = 0,
    nested: bool = False,
    header: str = "1",
) -> Path:
    """Write the DAGM 2007 layout with grayscale PNGs and tab-separated ``Labels.txt`` files.

    ``root/ClassN/{Train,Test}/NNNN.PNG`` and ``{Train,Test}/Label/{Labels.txt, NNNN_label.PNG}``
    (or ``root/ClassN/ClassN/...`` with ``nested``). Rows read ``<number>\\t<flag>\\t<image>\\t0\\t<label
    or 0>``, after one header line. Masks here are exact (the real ones are coarse ellipses).

    Returns:
        The dataset root (``root``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    base = root / category / category if nested else root / category
    number = 0
    for split, n_good, n_defect in (("Train", n_train_good, n_train_defect), ("Test", n_test_good, n_test_defect)):
        flags = [0] * n_good + [1] * n_defect
        rng.shuffle(flags)
        lines = [header] if header else []
        for row, flag in enumerate(flags, start=1):
            number += 1
            name = f"{number:04d}.PNG"
            if flag:
                image, mask = defective_image(rng, image_size)
                label = f"{number:04d}_label.PNG"
                _save(mask.astype(np.uint8) * 255, base / split / "Label" / label)
            else:
                image, label = normal_texture(rng, image_size), "0"
            _save(image[..., 0], base / split / name)
            lines.append(f"{row}\t{flag}\t{name}\t0\t{label}")
        labels = base / split / "Label" / "Labels.txt"
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("\n".join(lines) + "\n")
    return root


# Probabilities as the real labels.csv writes them (repr of the float).
ELPV_PROBABILITIES = (0.0, 1 / 3, 2 / 3, 1.0)


def make_fake_elpv(
    root: str | Path,
    counts: dict[str, tuple[int, int, int, int]] | None = None,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write the ELPV layout: ``root/labels.csv`` and ``root/images/cellNNNN.png`` (grayscale).

    ``labels.csv`` is whitespace-aligned like the real one (``images/cell0001.png  1.0  mono``), rows
    in a seeded random order of cell types and probabilities. Functional cells (probability 0) are the
    striped texture; the others carry a dark defect (no masks exist in ELPV).

    Args:
        root: Folder that receives ``labels.csv`` and ``images/``.
        counts: Cells per type, as ``(p=0, p=1/3, p=2/3, p=1)``. Defaults to mono ``(20, 2, 3, 5)``
            and poly ``(12, 1, 2, 4)``.
        image_size: Side of the square images.
        seed: Seed of the numpy generator: the same seed writes the same files.

    Returns:
        The dataset root (``root``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = counts or {"mono": (20, 2, 3, 5), "poly": (12, 1, 2, 4)}
    cells = [
        (cell_type, probability)
        for cell_type, per_probability in counts.items()
        for probability, count in zip(ELPV_PROBABILITIES, per_probability, strict=True)
        for _ in range(count)
    ]
    order = rng.permutation(len(cells))
    lines = []
    for number, index in enumerate(order, start=1):
        cell_type, probability = cells[index]
        if probability == 0.0:
            image = normal_texture(rng, image_size)
        else:
            image, _ = defective_image(rng, image_size)
        name = f"images/cell{number:04d}.png"
        _save(image[..., 0], root / name)
        lines.append(f"{name}  {probability!r:<18}  {cell_type}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def make_fake_folder(
    root: str | Path,
    defect_types: tuple[str, ...] = ("crack", "scratch"),
    n_train: int = 8,
    n_test_good: int = 3,
    n_per_defect: int = 2,
    image_size: int = 64,
    masks: bool = True,
    seed: int = 0,
) -> Path:
    """Write a user's own images in the layout ``docs/own_images.md`` recommends for ``Folder``.

    ``root/{train/good, test/good, test/<defect>, masks/<defect>}``, masks with the same file name as
    their image (``masks/crack/000.png`` for ``test/crack/000.png``); names repeat across defect
    folders, as a camera's counter would. ``masks=False`` writes no ``masks`` folder (image labels only).

    Returns:
        The dataset root (``root``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _save(normal_texture(rng, image_size), root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        _save(normal_texture(rng, image_size), root / "test" / "good" / f"{i:03d}.png")
    for defect in defect_types:
        for i in range(n_per_defect):
            image, mask = defective_image(rng, image_size)
            _save(image, root / "test" / defect / f"{i:03d}.png")
            if masks:
                _save(mask.astype(np.uint8) * 255, root / "masks" / defect / f"{i:03d}.png")
    return root
