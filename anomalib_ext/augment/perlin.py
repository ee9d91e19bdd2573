"""Perlin-shaped foreign-texture defects, the synthetic anomalies of RB-AE.

Paper: "Reference-Based Autoencoder for Surface Defect Detection" (W. Luo, H. Yao, W. Yu,
X. Wang), Sec. III-B, Eq. 1: ``I_ad = I_o * (1 - I_m) + I_n * I_m``.

RB-AE (like DRAEM before it) learns from normal images with synthetic defects: a binary mask
``I_m`` made by thresholding rotated 2-D Perlin noise, filled with the content ``I_n`` of a foreign
natural image. The masks have the irregular, blobby shapes of real stains and scratches, and the
foreign texture makes the region look out of place, which is what a defect is.

:class:`PerlinTextureAnomaly` is a batched, reproducible version of anomalib's
``PerlinAnomalyGenerator`` recipe (same Perlin noise: power-of-two lattice scales 2**0..2**5 per
axis, quintic fade, ``sqrt(2)`` scaling, rotation, threshold 0.5; same 3-op texture augmentation
list), but with every random draw taken from one ``torch.Generator``, the noise and masks of the
whole batch computed at once, and the known traps fixed (``blend_factor`` int/list silently
becoming 0.5; upper-case ``*.JPEG`` files not found; empty masks). Texture sources:

1. ``texture_dir``: a folder of natural images (DTD, an ImageNet subset, ...), searched recursively,
   extensions matched case-insensitively (the paper's choice: foreign natural images);
2. otherwise (``"noise"``, the offline default) anomalib's Perlin-noise pseudo-texture, foreign to
   any real surface;
3. ``texture_source="batch"``: cut-paste from another normal image of the same batch at the same
   place. On a homogeneous texture that content is what was there already: a few percent of such
   "defects" (one in 32 in ``tests/unit/test_perlin.py``) change nothing visible, even after the
   3 random ops, yet are labelled defective. Not a default any more.

Example:
    >>> import torch
    >>> from anomalib_ext.augment import PerlinTextureAnomaly
    >>> anomaly = PerlinTextureAnomaly(seed=0)            # no folder: Perlin-noise textures
    >>> images = torch.rand(4, 3, 64, 64)                 # [0, 1] pixel space
    >>> defective, mask = anomaly(images)
    >>> defective.shape, mask.shape
    (torch.Size([4, 3, 64, 64]), torch.Size([4, 1, 64, 64]))
    >>> bool(torch.equal(defective * (1 - mask), images * (1 - mask)))   # unchanged outside the mask
    True

See Also:
    - :mod:`anomalib_ext.augment.damage`: random square damage (MLDFR).
    - :mod:`anomalib_ext.augment.noise`: Gaussian noise blending (N2N).
    - ``anomalib.data.utils.generators.perlin``: the reference implementation.
    - Spec: section 2.2, assumptions A5, A13-A16 and traps T2-T4 of ``methods/rbae.md``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from kornia.geometry.transform import rotate
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from anomalib_ext.augment._utils import (
    SeededRandomness,
    check_images,
    check_int,
    check_number,
    check_range,
    rand,
    randint,
)

TEXTURE_SOURCES = ("auto", "folder", "batch", "noise")


def _fade(t: Tensor) -> Tensor:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def _next_pow2(value: int) -> int:
    return 1 << max(0, math.ceil(math.log2(value)))


def perlin_noise_from_angles(angles: Tensor, scales: Tensor, height: int, width: int) -> Tensor:
    """Batched 2-D Perlin noise, the same field as anomalib's ``generate_perlin_noise``.

    anomalib draws one lattice of gradient angles per image inside a Python loop and uses the
    global RNG; here the caller passes the angles, so a whole batch (each image with its own
    lattice scale) is computed at once and the randomness stays under the caller's control.
    With ``angles[0, :sy + 1, :sx + 1] = 2 * pi * torch.rand(sy + 1, sx + 1)`` this reproduces
    ``generate_perlin_noise(height, width, scale=(sy, sx))`` after the same ``torch.rand`` call.

    Args:
        angles: ``(B, Ay, Ax)`` gradient angles in radians; image ``b`` uses the top-left
            ``(sy + 1, sx + 1)`` lattice corners.
        scales: ``(B, 2)`` integer lattice scales ``(sy, sx)`` (cells along height and width of the
            power-of-two padded canvas, as anomalib's ``scale=(scalex, scaley)``).
        height: Output height.
        width: Output width.

    Returns:
        ``(B, height, width)`` float tensor, values roughly in [-1, 1].
    """
    batch, lattice_y, lattice_x = angles.shape
    device = angles.device
    pad_h, pad_w = _next_pow2(height), _next_pow2(width)
    scale_y = scales[:, 0].to(angles.dtype).view(batch, 1, 1)
    scale_x = scales[:, 1].to(angles.dtype).view(batch, 1, 1)
    pos_y = torch.arange(height, device=device, dtype=angles.dtype).view(1, height, 1) * scale_y / pad_h
    pos_x = torch.arange(width, device=device, dtype=angles.dtype).view(1, 1, width) * scale_x / pad_w
    cell_y, cell_x = pos_y.floor(), pos_x.floor()
    frac_y, frac_x = (pos_y - cell_y).expand(batch, height, width), (pos_x - cell_x).expand(batch, height, width)
    cell_y, cell_x = cell_y.long(), cell_x.long()
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1).view(batch, lattice_y * lattice_x, 2)

    def corner(dy: int, dx: int) -> Tensor:
        index = ((cell_y + dy) * lattice_x + (cell_x + dx)).expand(batch, height, width).reshape(batch, -1)
        grad = torch.gather(gradients, 1, index[..., None].expand(-1, -1, 2)).view(batch, height, width, 2)
        return grad[..., 0] * (frac_y - dy) + grad[..., 1] * (frac_x - dx)

    fade_y, fade_x = _fade(frac_y), _fade(frac_x)
    top = torch.lerp(corner(0, 0), corner(1, 0), fade_y)
    bottom = torch.lerp(corner(0, 1), corner(1, 1), fade_y)
    return math.sqrt(2.0) * torch.lerp(top, bottom, fade_x)


def list_texture_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted), extensions matched case-insensitively.

    anomalib's generator globs lower-case extensions only, so ImageNet's ``*.JPEG`` files are
    silently skipped there (spec trap T3); here they are found.

    Args:
        folder: Directory to search.

    Returns:
        Sorted list of image paths.

    Raises:
        FileNotFoundError: If ``folder`` is not a directory.
        ValueError: If it contains no image with one of torchvision's ``IMG_EXTENSIONS``.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        msg = f"texture_dir={str(folder)!r} is not a directory (it must contain texture images)."
        raise FileNotFoundError(msg)
    extensions = {ext.lower() for ext in IMG_EXTENSIONS}
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not paths:
        msg = (
            f"texture_dir={str(folder)!r} contains no images (searched recursively for extensions "
            f"{sorted(extensions)}, any case). Point it at a folder of texture images (e.g. DTD) or "
            "pass texture_dir=None for Perlin-noise textures."
        )
        raise ValueError(msg)
    return paths


class PerlinTextureAnomaly(SeededRandomness):
    """Paste foreign texture into Perlin-noise-shaped regions (RB-AE Eq. 1, DRAEM-style).

    For each image: draw a Perlin noise field (lattice scales ``2**a, 2**b`` with ``a, b`` uniform
    in ``perlin_scale_exponents``), rotate it by a uniform angle in ``rotation_range`` (bilinear,
    zero fill), threshold it at ``threshold`` to get the mask ``m``, and blend
    ``x' = x (1 - m) + m (beta t + (1 - beta) x)`` with a texture ``t`` and ``beta`` from
    ``blend_factor``. Masks that come out empty are redrawn up to ``max_retries`` times (the image
    stays unchanged with an empty mask if all fail, as in anomalib).

    Args:
        texture_dir: A14: folder of texture images (DTD, an ImageNet subset, ...). Required when
            ``texture_source="folder"``; used by ``"auto"`` when given. A folder with no images
            raises ``ValueError`` naming it.
        texture_source: ``"auto"`` (default: ``texture_dir`` if given, else ``"noise"``),
            ``"folder"``, ``"noise"`` (anomalib's Perlin-noise pseudo-texture,
            ``noise * 0.5 + 0.25``) or ``"batch"`` (each image gets the content of another random
            image of the batch at the same place, the cut-paste fallback of spec section 8; on a
            homogeneous texture some of these defects are invisible, see the module docstring).
        augment_texture: A14: apply 3 distinct random ops from anomalib's DRAEM list (contrast,
            brightness, sharpness, hue/saturation, solarize, posterize, invert, AutoAugment,
            equalize, affine) to each texture (default True). Keep it on for ``"batch"`` textures:
            an un-augmented patch of the same texture is not a defect.
        blend_factor: A15: beta, a number or a ``(min, max)`` range drawn per image, in [0, 1];
            default 1.0 (hard replacement, Eq. 1). Ints and lists are coerced (anomalib would
            silently use 0.5 for ``1`` or ``[0.2, 1.0]``, trap T2).
        probability: A16: probability that an image gets a defect (default 1.0).
        rotation_range: A13: ``(min, max)`` rotation of the noise in degrees (default (-90, 90)).
        perlin_scale_exponents: A13: inclusive ``(min, max)`` exponents of the lattice scales
            (default (0, 5): scales 1..32, as DRAEM/anomalib).
        threshold: A13: noise threshold of the mask (default 0.5).
        dual_mask: A13: with probability 0.5 per image, take the union with a second independent
            mask (anomalib's ``dual_mask``); default False (spec: single mask).
        max_retries: Redraws for empty masks (default 10, as anomalib).
        value_range: A5: ``(low, high)`` value range of the images (default (0.0, 1.0), pixel
            space). Folder and noise textures (in [0, 1]) are mapped to it; batch textures are
            augmented in [0, 1] and mapped back; outputs stay inside it.
        texture_cache_size: Number of decoded, resized folder textures kept in memory (default 256).
        seed: Seed of a private generator used when ``__call__`` gets no generator; ``None``
            (default) draws from torch's global RNG.

    Returns (from ``__call__``):
        ``(defective, mask)``: the batch with pasted textures (same shape, dtype and device) and the
        ``(B, 1, H, W)`` float {0, 1} mask of the pasted regions. Outside the mask the output is
        bit-identical to the input.

    Example:
        >>> import torch
        >>> from anomalib_ext.augment import PerlinTextureAnomaly
        >>> # anomaly = PerlinTextureAnomaly(texture_dir="datasets/dtd/images")   # with DTD
        >>> anomaly = PerlinTextureAnomaly(texture_source="batch", blend_factor=1.0, seed=0)
        >>> images = torch.rand(8, 3, 128, 128)
        >>> defective, mask = anomaly(images, generator=torch.Generator().manual_seed(3))
        >>> bool(((mask == 0) | (mask == 1)).all())
        True
    """

    def __init__(
        self,
        texture_dir: str | Path | None = None,
        texture_source: str = "auto",
        augment_texture: bool = True,
        blend_factor: float | Sequence[float] = 1.0,
        probability: float = 1.0,
        rotation_range: Sequence[float] = (-90.0, 90.0),
        perlin_scale_exponents: Sequence[int] = (0, 5),
        threshold: float = 0.5,
        dual_mask: bool = False,
        max_retries: int = 10,
        value_range: Sequence[float] = (0.0, 1.0),
        texture_cache_size: int = 256,
        seed: int | None = None,
    ) -> None:
        if texture_source not in TEXTURE_SOURCES:
            msg = f"texture_source={texture_source!r} is invalid: accepted values are {TEXTURE_SOURCES}."
            raise ValueError(msg)
        if texture_source == "folder" and texture_dir is None:
            msg = "texture_source='folder' needs texture_dir (a folder of texture images), got None."
            raise ValueError(msg)
        if texture_source == "auto":
            texture_source = "folder" if texture_dir is not None else "noise"
        self.texture_source = texture_source
        self.texture_dir = None if texture_dir is None else Path(texture_dir)
        self.texture_paths = list_texture_images(texture_dir) if texture_source == "folder" else []
        self.augment_texture = bool(augment_texture)
        self.blend_factor = check_range("blend_factor", blend_factor, 0.0, 1.0)
        self.probability = check_number("probability", probability, 0.0, 1.0)
        self.rotation_range = check_range("rotation_range", rotation_range, -360.0, 360.0)
        self.perlin_scale_exponents = check_range("perlin_scale_exponents", perlin_scale_exponents, 0, 10, integer=True)
        self.threshold = check_number("threshold", threshold, -1.0, 1.0, low_inclusive=False, high_inclusive=False)
        self.dual_mask = bool(dual_mask)
        self.max_retries = check_int("max_retries", max_retries, 0)
        low, high = check_range("value_range", value_range)
        if low >= high:
            msg = f"value_range={value_range!r} is invalid: low must be smaller than high."
            raise ValueError(msg)
        self.value_range = (low, high)
        self.texture_cache_size = check_int("texture_cache_size", texture_cache_size, 0)
        self.seed = None if seed is None else check_int("seed", seed, 0)
        self._private_generator = None
        self._texture_cache: OrderedDict[tuple[int, int, int, int], Tensor] = OrderedDict()
        self._augmenters = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(texture_source={self.texture_source!r}, texture_dir={self.texture_dir}, "
            f"num_textures={len(self.texture_paths)}, augment_texture={self.augment_texture}, "
            f"blend_factor={self.blend_factor}, probability={self.probability}, seed={self.seed})"
        )

    # ------------------------------------------------------------------ masks
    def perlin_noise(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Rotated Perlin noise fields, one per image, ``(B, 1, H, W)`` float32.

        Fields whose maximum does not exceed ``threshold`` are min-max rescaled to [-1, 1] before
        the rotation (as anomalib does), so their mask is not empty.

        Args:
            batch: Number of fields.
            height: Field height.
            width: Field width.
            generator: Source of randomness (``None``: ``seed`` / the global RNG).
            device: Device of the result.

        Returns:
            The noise fields.
        """
        gen = self._generator(generator)
        device = torch.device(device)
        exp_lo, exp_hi = self.perlin_scale_exponents
        scales = 2 ** randint(exp_lo, exp_hi + 1, (batch, 2), gen, device)
        lattice = 2**exp_hi + 1
        angles = 2 * math.pi * rand((batch, lattice, lattice), gen, device)
        noise = perlin_noise_from_angles(angles, scales, height, width)
        low = noise.flatten(1).amin(1).view(batch, 1, 1)
        high = noise.flatten(1).amax(1).view(batch, 1, 1)
        rescaled = torch.where(high > low, (noise - low) / (high - low).clamp_min(1e-12), torch.zeros_like(noise))
        noise = torch.where(high > self.threshold, noise, rescaled * 2 - 1)
        rot_lo, rot_hi = self.rotation_range
        degrees = rand((batch,), gen, device) * (rot_hi - rot_lo) + rot_lo
        return rotate(noise[:, None], degrees, mode="bilinear", padding_mode="zeros")

    def masks(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[Tensor, Tensor]:
        """Binary Perlin masks with retries for empty ones, and their noise fields.

        Args:
            batch: Number of masks.
            height: Mask height.
            width: Mask width.
            generator: Source of randomness (``None``: ``seed`` / the global RNG).
            device: Device of the result.

        Returns:
            ``(mask, noise)``: ``(B, 1, H, W)`` bool masks and float32 noise fields.
        """
        gen = self._generator(generator)

        def draw() -> tuple[Tensor, Tensor]:
            noise = self.perlin_noise(batch, height, width, gen, device)
            mask = noise > self.threshold
            if self.dual_mask:
                second = self.perlin_noise(batch, height, width, gen, device) > self.threshold
                union = (rand((batch,), gen, device) < 0.5).view(batch, 1, 1, 1)
                mask = mask | (second & union)
            return mask, noise

        mask, noise = draw()
        for _ in range(self.max_retries):
            empty = ~mask.flatten(1).any(1)
            if not bool(empty.any()):
                break
            new_mask, new_noise = draw()
            redo = empty.view(batch, 1, 1, 1)
            mask, noise = torch.where(redo, new_mask, mask), torch.where(redo, new_noise, noise)
        return mask, noise

    # --------------------------------------------------------------- textures
    def _augmenter(self) -> object:
        if self._augmenters is None:
            from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

            # anomalib draws the solarize threshold once at construction from the global RNG; fix it
            # from our seed so that the whole corruption is reproducible.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0 if self.seed is None else self.seed)
                self._augmenters = PerlinAnomalyGenerator(probability=1.0, blend_factor=1.0).augmenters
        return self._augmenters

    def _augment(self, textures: Tensor, gen: torch.Generator | None) -> Tensor:
        """Apply anomalib's 3-op augmentation to ``[0, 1]`` float32 textures, one image at a time.

        torchvision's transforms draw one set of parameters per call, so per-image randomness needs
        one call per image (the only per-image loop here). Their global-RNG draws are made
        reproducible by seeding a forked RNG from ``gen``.
        """
        augmenter = self._augmenter()
        call_seed = int(randint(0, 2**62, (1,), gen, torch.device("cpu")))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(call_seed)
            out = torch.stack([augmenter(texture) for texture in textures])  # type: ignore[operator]
        return out.clamp(0.0, 1.0)

    def _load_texture(self, index: int, channels: int, height: int, width: int) -> Tensor:
        key = (index, channels, height, width)
        cached = self._texture_cache.get(key)
        if cached is not None:
            self._texture_cache.move_to_end(key)
            return cached
        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        image = decode_image(str(self.texture_paths[index]), mode=mode)
        image = TF.resize(image, [height, width], antialias=True)
        if self.texture_cache_size > 0:
            self._texture_cache[key] = image
            if len(self._texture_cache) > self.texture_cache_size:
                self._texture_cache.popitem(last=False)
        return image

    def textures(
        self,
        images: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Texture for every image of the batch, float32 in ``[0, 1]`` (not yet mapped to ``value_range``).

        Args:
            images: ``(B, C, H, W)`` batch (the source of ``"batch"`` textures).
            generator: Source of randomness (``None``: ``seed`` / the global RNG).
            noise: ``(B, 1, H, W)`` Perlin fields, needed for ``"noise"`` textures.

        Returns:
            ``(B, C, H, W)`` float32 textures on the images' device.
        """
        gen = self._generator(generator)
        batch, channels, height, width = images.shape
        device = images.device
        low, high = self.value_range
        if self.texture_source == "folder":
            if channels not in {1, 3}:
                msg = f"folder textures need images with 1 or 3 channels, got {channels}."
                raise ValueError(msg)
            picks = randint(0, len(self.texture_paths), (batch,), gen, torch.device("cpu")).tolist()
            loaded = [self._load_texture(i, channels, height, width) for i in picks]
            textures = torch.stack(loaded).to(device=device, dtype=torch.float32) / 255.0
        elif self.texture_source == "batch":
            shift = randint(1, max(batch, 2), (batch,), gen, device) if batch > 1 else torch.zeros(1, device=device)
            donor = (torch.arange(batch, device=device) + shift.long()) % batch
            textures = ((images[donor].float() - low) / (high - low)).clamp(0.0, 1.0)
        else:
            if noise is None:
                msg = "noise textures need the Perlin noise fields (noise=...)."
                raise ValueError(msg)
            textures = (noise.float() * 0.5 + 0.25).expand(batch, channels, height, width).clamp(0.0, 1.0)
        if self.augment_texture:
            textures = self._augment(textures, gen) if channels == 3 else textures
        return textures

    # ------------------------------------------------------------------- call
    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Add one Perlin-shaped texture defect to each image (with probability ``probability``).

        Args:
            images: ``(B, C, H, W)`` floating-point batch in ``value_range``.
            generator: Optional ``torch.Generator`` (any device) to draw from; overrides ``seed``.

        Returns:
            ``(defective, mask)``: the corrupted batch and the ``(B, 1, H, W)`` float mask.
        """
        check_images(images)
        gen = self._generator(generator)
        batch, _, height, width = images.shape
        device = images.device
        mask, noise = self.masks(batch, height, width, gen, device)
        mask &= (rand((batch,), gen, device) < self.probability).view(batch, 1, 1, 1)
        textures = self.textures(images, gen, noise)
        low, high = self.value_range
        textures = textures * (high - low) + low
        beta_lo, beta_hi = self.blend_factor
        beta = (rand((batch,), gen, device) * (beta_hi - beta_lo) + beta_lo).view(batch, 1, 1, 1)
        work = images.float() if images.dtype != torch.float64 else images
        pasted = beta.to(work.dtype) * textures.to(work.dtype) + (1 - beta.to(work.dtype)) * work
        if beta_lo == beta_hi == 1.0:
            pasted = textures.to(work.dtype)  # exact replacement, Eq. 1
        out = torch.where(mask, pasted.clamp(low, high).to(images.dtype), images)
        return out, mask.to(images.dtype)
