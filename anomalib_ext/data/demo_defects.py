# Copyright (C) 2026 anomalib-ext developers
# SPDX-License-Identifier: Apache-2.0

"""Realistic surface defects with exact masks, for the offline demo dataset.

Six kinds of defect are painted into grayscale texture photographs:

- ``scratch``: a thin smooth curve (quadratic Bezier), bright like a reflective groove or dark;
- ``crack``: a dark jagged random-walk line with a side branch;
- ``stain``: an irregular soft-edged darkened blob with a visible rim;
- ``hole``: a dark irregular pit with a lit rim on one side;
- ``foreign``: a polygon of a different photograph (foreign material stuck on the surface);
- ``warp``: a local swirl deformation of the texture itself (no intensity change).

This generator deliberately differs from the training-time augmentations the models of this
package use (``anomalib_ext.augment``: random squares of blur/black/white, Perlin-shaped foreign
textures, Gaussian noise blending): no defect here is a square, a Perlin-noise region or a noise
blend, so a model is never tested on its own training corruption.

Masks are exact by construction: every pixel outside the mask keeps its original value, and the
mask holds the pixels the defect changed (for ``warp``, those displaced by at least half a pixel).

Example:
    >>> import numpy as np
    >>> from skimage import data
    >>> generator = SurfaceDefectGenerator(donors=[data.moon() / 255.0])
    >>> rng = np.random.default_rng(0)
    >>> image = data.brick()[:256, :256] / 255.0
    >>> defective, mask, kind = generator(image, rng)
    >>> defective.shape, mask.dtype, kind in DEFECT_KINDS
    ((256, 256), dtype('bool'), True)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.draw import line, polygon

DEFECT_KINDS = ("scratch", "crack", "stain", "hole", "foreign", "warp")


def _centre(rng: np.random.Generator, size: int, margin: float = 0.25) -> np.ndarray:
    """A random (row, col) point at least ``margin * size`` from the border."""
    return rng.uniform(margin * size, (1 - margin) * size, size=2)


def _stroke(points: np.ndarray, size: int) -> np.ndarray:
    """Rasterise a polyline of (row, col) points into a one-pixel-wide boolean image."""
    canvas = np.zeros((size, size), dtype=bool)
    rounded = np.clip(np.round(points).astype(int), 0, size - 1)
    for (r0, c0), (r1, c1) in itertools.pairwise(rounded):
        rows, cols = line(r0, c0, r1, c1)
        canvas[rows, cols] = True
    return canvas


def _paint(image: np.ndarray, mask: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``target`` into ``image`` with ``alpha`` inside ``mask`` only; outside stays exact."""
    blended = image * (1 - alpha) + target * alpha
    return np.where(mask, blended, image)


def scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin smooth curve, bright (reflective groove) or dark."""
    size = image.shape[0]
    start = _centre(rng, size, 0.15)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.3, 0.6) * size
    end = start + length * np.array([np.sin(angle), np.cos(angle)])
    control = (start + end) / 2 + rng.normal(0, 0.12 * size, size=2)
    t = np.linspace(0, 1, int(4 * length))[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    distance = ndimage.distance_transform_edt(~_stroke(curve, size))
    half_width = max(0.5, rng.uniform(0.4, 1.2) * size / 256)
    mask = distance <= half_width
    target = np.full_like(image, 0.95 if rng.random() < 0.6 else 0.06)
    alpha = 0.85 * (1 - 0.4 * distance / (half_width + 1e-6))
    return _paint(image, mask, target, alpha), mask


def crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark jagged random-walk line with one side branch."""
    size = image.shape[0]
    step = max(1.5, size / 64)

    def walk(origin: np.ndarray, heading: float, steps: int) -> np.ndarray:
        headings = heading + np.cumsum(rng.normal(0, 0.45, size=steps))
        moves = step * np.stack([np.sin(headings), np.cos(headings)], axis=1)
        return np.vstack([origin, origin + np.cumsum(moves, axis=0)])

    trunk = walk(_centre(rng, size, 0.3), rng.uniform(0, 2 * np.pi), int(rng.integers(14, 26)))
    fork = trunk[int(rng.integers(3, len(trunk) - 3))]
    branch = walk(fork, rng.uniform(0, 2 * np.pi), int(rng.integers(5, 12)))
    skeleton = _stroke(trunk, size) | _stroke(branch, size)
    distance = ndimage.distance_transform_edt(~skeleton)
    mask = distance <= max(0.5, rng.uniform(0.6, 1.4) * size / 256)
    target = np.full_like(image, 0.03)
    return _paint(image, mask, target, np.full_like(image, 0.9)), mask


def _blob(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """An irregular smooth field whose level set ``> 1`` is a blob around a random centre."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = _centre(rng, size)
    field = np.zeros((size, size))
    for _ in range(int(rng.integers(3, 7))):
        r0, c0 = centre + rng.normal(0, 0.6 * radius, size=2)
        sigma = radius * rng.uniform(0.4, 0.8)
        field += 1.6 * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * sigma**2))
    return field


def stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An irregular darkened blob with a soft interior and a visible rim."""
    size = image.shape[0]
    field = _blob(rng, size, rng.uniform(0.06, 0.13) * size)
    mask = field > 1.0
    inner = np.clip((field - 1.0) / 0.8, 0, 1)
    alpha = 0.5 + 0.3 * inner + 0.2 * (1 - inner) ** 4  # darker at the rim: a coffee-ring edge
    strength = rng.uniform(0.35, 0.55)
    target = image * strength
    return _paint(image, mask, target, alpha), mask


def hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark irregular pit whose rim is lit on one side."""
    size = image.shape[0]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    r0, c0 = _centre(rng, size)
    radius = rng.uniform(0.04, 0.08) * size
    theta = np.arctan2(rows - r0, cols - c0)
    wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    rho = np.hypot(rows - r0, cols - c0) / (radius * wobble)
    mask = rho <= 1.0
    light = rng.uniform(0, 2 * np.pi)
    rim = (rho > 0.75) & (np.cos(theta - light) > 0.3)
    target = np.where(rim, 0.92, 0.04 + 0.08 * rho)
    return _paint(image, mask, target, np.full_like(image, 0.92)), mask


def foreign(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A polygon of another photograph pasted onto the surface (foreign material)."""
    size = image.shape[0]
    r0, c0 = _centre(rng, size)
    n_vertices = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=n_vertices))
    radii = rng.uniform(0.06, 0.15, size=n_vertices) * size
    mask = np.zeros((size, size), dtype=bool)
    mask[polygon(r0 + radii * np.sin(angles), c0 + radii * np.cos(angles), shape=mask.shape)] = True
    top = rng.integers(0, donor.shape[0] - size + 1)
    left = rng.integers(0, donor.shape[1] - size + 1)
    patch = donor[top : top + size, left : left + size]
    # Shift the donor's brightness away from the surface's so the material reads as foreign.
    offset = 0.25 if image[mask].mean() < 0.5 else -0.25
    patch = np.clip(patch - patch[mask].mean() + image[mask].mean() + offset, 0, 1)
    return np.where(mask, patch, image), mask


def warp(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A local swirl of the texture (a deformation): pixels displaced >= 0.5 px form the mask."""
    size = image.shape[0]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    r0, c0 = _centre(rng, size)
    radius = rng.uniform(0.1, 0.18) * size
    strength = rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 3.5)
    dr, dc = rows - r0, cols - c0
    rho = np.hypot(dr, dc)
    turn = strength * np.clip(1 - rho / radius, 0, 1) ** 2
    src_r = r0 + dr * np.cos(turn) - dc * np.sin(turn)
    src_c = c0 + dr * np.sin(turn) + dc * np.cos(turn)
    warped = ndimage.map_coordinates(image, [src_r, src_c], order=1, mode="reflect")
    mask = np.hypot(src_r - rows, src_c - cols) >= 0.5
    return np.where(mask, warped, image), mask


class SurfaceDefectGenerator:
    """Paint one realistic surface defect with an exact mask into a grayscale image.

    Args:
        kinds: Defect kinds to draw from (subset of ``DEFECT_KINDS``). Defaults to all.
        donors: Grayscale float photographs in [0, 1], at least as large as the images, used as
            foreign material by ``foreign``. Required when ``foreign`` is among ``kinds``.
        min_visibility: Smallest mean absolute change inside the mask; a defect below it (a
            swirl on a flat area, say) is redrawn so that every defective image shows its defect.
            Defaults to ``0.04`` (about 10 grey levels).

    Raises:
        ValueError: If a kind is unknown, ``foreign`` has no donor photograph or
            ``min_visibility`` is outside [0, 1).
    """

    def __init__(
        self,
        kinds: Sequence[str] = DEFECT_KINDS,
        donors: Sequence[np.ndarray] = (),
        min_visibility: float = 0.04,
    ) -> None:
        unknown = sorted(set(kinds) - set(DEFECT_KINDS))
        if unknown or not kinds:
            msg = f"kinds must be a non-empty subset of {DEFECT_KINDS}, got {tuple(kinds)}"
            raise ValueError(msg)
        if "foreign" in kinds and not donors:
            msg = "donors must hold at least one photograph when 'foreign' is among kinds"
            raise ValueError(msg)
        if not 0 <= min_visibility < 1:
            msg = f"min_visibility must be in [0, 1), got {min_visibility}"
            raise ValueError(msg)
        self.kinds = tuple(kinds)
        self.min_visibility = min_visibility
        self.donors = [np.asarray(donor, dtype=np.float64) for donor in donors]

    def __call__(
        self,
        image: np.ndarray,
        rng: np.random.Generator,
        kind: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Return ``(defective image, bool mask, kind)``; the kind is drawn from ``rng`` if not given.

        Args:
            image: Square grayscale float image in [0, 1], shape (H, H).
            rng: Numpy generator: the same state gives the same defect.
            kind: Defect kind; drawn uniformly from ``kinds`` when ``None``.

        Returns:
            The defective image (float64, [0, 1]), its mask (bool, non-empty) and the kind.
        """
        kind = kind or self.kinds[int(rng.integers(len(self.kinds)))]
        image = np.asarray(image, dtype=np.float64)
        for _ in range(20):  # redraw a defect that lands on nothing or on a flat, unchanged area
            if kind == "foreign":
                donor = self.donors[int(rng.integers(len(self.donors)))]
                defective, mask = foreign(image, rng, donor)
            else:
                defective, mask = _KINDS[kind](image, rng)
            defective = np.clip(defective, 0, 1)
            if mask.sum() >= 4 and np.abs(defective - image)[mask].mean() >= self.min_visibility:
                return defective, mask, kind
        msg = f"could not place a visible {kind!r} defect on a {image.shape} image"
        raise RuntimeError(msg)


_KINDS = {"scratch": scratch, "crack": crack, "stain": stain, "hole": hole, "warp": warp}
