"""Random square damage, the training corruption of MLDFR.

Paper: "MLDFR: A Multilevel Features Restoration Method Based on Damaged Images for Anomaly
Detection and Localization" (Guo et al., IEEE Trans. Ind. Informat., 2024,
https://doi.org/10.1109/TII.2023.3292904).

MLDFR learns to restore the features of an intact image from the features of a damaged copy. The
damage is a set of about 180 small squares (side about 1/24 of the image) at random positions; all
squares of one image are damaged the same way, with a mode drawn per image from Gaussian blur,
black fill ("mask") and white fill. Because the network only ever learns to replace damaged
content by normal content, a real defect at test time gets "restored" and shows up as a large
restoration error.

:class:`RandomPatchDamage` implements this as a batched, device-agnostic callable: squares are
placed with tensor ops (one "last writer" index map per image, so later squares overwrite earlier
ones as in the public code), the per-square blur of every square is one batched separable
Gaussian (kernel from kornia, the same as anomalib's ``GaussianBlur2d`` with replicate borders),
and nothing loops over images or squares in Python.

Example:
    >>> import torch
    >>> from anomalib_ext.augment import RandomPatchDamage
    >>> damage = RandomPatchDamage(seed=0)              # paper defaults: 180 squares of side H/24
    >>> images = torch.rand(4, 3, 96, 96)               # [0, 1] pixel space, before normalisation
    >>> damaged, mask = damage(images)
    >>> damaged.shape, mask.shape
    (torch.Size([4, 3, 96, 96]), torch.Size([4, 1, 96, 96]))
    >>> bool(((damaged != images).any(1, keepdim=True) <= mask.bool()).all())  # only inside the mask
    True

See Also:
    - :mod:`anomalib_ext.augment.perlin`: Perlin-shaped foreign-texture defects (RB-AE).
    - :mod:`anomalib_ext.augment.noise`: Gaussian noise blending (N2N).
    - Spec: section 2.2 and assumptions A15-A19 of ``methods/mldfr.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.filters import get_gaussian_kernel1d
from torch import Tensor

from anomalib_ext.augment._utils import (
    SeededRandomness,
    check_images,
    check_int,
    check_number,
    check_range,
    rand,
    randint,
)

DAMAGE_MODES = ("blur", "mask", "white", "rgb", "cutpaste")
"""Accepted damage modes. ``"black"`` is accepted as a synonym of ``"mask"``."""

PLACEMENTS = ("uniform", "grid")
BLUR_SCOPES = ("square", "image")


def replicate_blur_matrix(size: int, kernel_1d: Tensor) -> Tensor:
    """Matrix ``M`` such that ``M @ x`` is the 1-D correlation of ``x`` with a replicate-padded border.

    For a symmetric Gaussian kernel, ``M @ X @ M.T`` equals
    ``GaussianBlur2d(..., border_type="replicate")(X)`` on a ``size x size`` crop, but costs
    ``O(size^3)`` instead of ``O(size^2 * kernel)``: for 16-px squares and a 73-tap kernel this is
    about 10x less work, and every square of the batch is blurred in one ``matmul``.

    Args:
        size: Length of the signal (the square side).
        kernel_1d: 1-D kernel of odd length ``K``.

    Returns:
        A ``(size, size)`` tensor with the dtype/device of ``kernel_1d``.
    """
    radius = kernel_1d.numel() // 2
    offsets = torch.arange(-radius, radius + 1, device=kernel_1d.device)
    source = (torch.arange(size, device=kernel_1d.device)[:, None] + offsets[None, :]).clamp(0, size - 1)
    matrix = torch.zeros(size, size, dtype=kernel_1d.dtype, device=kernel_1d.device)
    return matrix.scatter_add_(1, source, kernel_1d.expand(size, -1).contiguous())


class RandomPatchDamage(SeededRandomness):
    """Damage each image with many small squares, one damage mode per image (MLDFR, spec 2.2).

    Every image gets ``num_squares`` squares of side ``round(side_fraction * H)`` (or
    ``square_size`` pixels) at independent uniform positions fully inside the image (overlaps
    allowed, later squares overwrite earlier ones), or in distinct cells of a grid. One mode per
    image is drawn from ``modes``:

    - ``"blur"``: each square becomes a Gaussian blur of its own pixels (replicate border), sigma
      ``blur_sigma_fraction * H`` (9 px at 384);
    - ``"mask"`` (or ``"black"``): filled with ``mask_value`` (0.0, black);
    - ``"white"``: filled with ``white_value`` (1.0);
    - ``"rgb"`` (Table VIII ablation): each square gets one of the 2**C colours whose channels are
      either ``mask_value`` or ``white_value`` (the 8 saturated colours for RGB);
    - ``"cutpaste"`` (Table VIII ablation): each square gets a same-size patch copied from a random
      location of the same (undamaged) image.

    Works in whatever space the images are in: with [0, 1] pixel images (the paper) the defaults
    are black and white. For ImageNet-normalised images pass per-channel fill values
    ``(0 - mean) / std`` and ``(1 - mean) / std`` (spec trap T7).

    Args:
        num_squares: Squares per image, or an inclusive ``(min, max)`` range drawn per image.
            A15: about 180 squares (default 180).
        side_fraction: Square side as a fraction of the image height, rounded, at least 1 px.
            A15: about 1/24 of the input (16 px at 384, 11 px at 256). A ``(min, max)`` range
            draws each square's side uniformly between the rounded bounds. Ignored if
            ``square_size`` is given.
        square_size: Absolute square side in pixels, or an inclusive ``(min, max)`` range drawn per
            square. ``None`` (default) uses ``side_fraction``.
        placement: A16: ``"uniform"`` (default; independent uniform top-left corners, whole square
            inside the image, overlaps allowed) or ``"grid"`` (distinct cells of the
            ``(H // s) x (W // s)`` grid, with ``s`` the largest side; no overlap; at most all
            cells).
        modes: A17: modes drawn uniformly once per image (default ``("blur", "mask", "white")``,
            the paper's final configuration). Also accepted: ``"black"``, ``"rgb"``,
            ``"cutpaste"`` (A19).
        mode_probabilities: Probabilities of ``modes`` (same length, non-negative, normalised).
            ``None`` (default) means uniform.
        probability: A17: probability that an image is damaged at all (default 1.0, every sample).
        blur_sigma_fraction: A18: Gaussian sigma as a fraction of the image height; default 9/384
            (sigma 9 px at 384, the public code's PIL ``GaussianBlur(radius=9)``).
        blur_sigma: Absolute sigma in pixels; overrides ``blur_sigma_fraction`` when given.
        blur_kernel_size: Odd kernel size; ``None`` (default) uses anomalib's
            ``2 * int(4 * sigma + 0.5) + 1`` (73 at sigma 9).
        blur_scope: A18: ``"square"`` (default; each square blurs only its own pixels, replicate
            border) or ``"image"`` (blur the whole image with anomalib's ``GaussianBlur2d``, then
            copy the squares; neighbouring context bleeds in).
        mask_value: A19: fill value of ``"mask"`` squares (default 0.0), a number or one value per
            channel.
        white_value: A19: fill value of ``"white"`` squares (default 1.0), a number or one value
            per channel.
        seed: Seed of a private generator used when ``__call__`` gets no generator; ``None``
            (default) draws from torch's global RNG.

    Returns (from ``__call__``):
        ``(damaged, mask)``: the damaged batch (same shape, dtype and device as the input) and a
        ``(B, 1, H, W)`` float mask, 1.0 where a square was written (a pixel inside it may keep its
        value by coincidence, e.g. a white fill on a white pixel), 0.0 elsewhere. Outside the mask
        the output is bit-identical to the input.

    Example:
        >>> import torch
        >>> from anomalib_ext.augment import RandomPatchDamage
        >>> damage = RandomPatchDamage(num_squares=180, side_fraction=1 / 24, seed=0)
        >>> images = torch.rand(2, 3, 384, 384)
        >>> damaged, mask = damage(images)             # in training_step, before normalisation
        >>> 0.2 < mask.mean().item() < 0.33            # about 27 % of the pixels (spec 2.2)
        True
        >>> gen = torch.Generator().manual_seed(1)     # or per-call generator, e.g. seeded per rank
        >>> damaged2, _ = damage(images, generator=gen)
    """

    def __init__(
        self,
        num_squares: int | Sequence[int] = 180,
        side_fraction: float | Sequence[float] = 1 / 24,
        square_size: int | Sequence[int] | None = None,
        placement: str = "uniform",
        modes: Sequence[str] = ("blur", "mask", "white"),
        mode_probabilities: Sequence[float] | None = None,
        probability: float = 1.0,
        blur_sigma_fraction: float = 9 / 384,
        blur_sigma: float | None = None,
        blur_kernel_size: int | None = None,
        blur_scope: str = "square",
        mask_value: float | Sequence[float] = 0.0,
        white_value: float | Sequence[float] = 1.0,
        seed: int | None = None,
    ) -> None:
        self.num_squares = check_range("num_squares", num_squares, 0, None, integer=True)
        self.side_fraction = check_range("side_fraction", side_fraction, 0.0, 1.0)
        if self.side_fraction[0] <= 0.0:
            msg = f"side_fraction={side_fraction!r} is out of range: accepted range is (0, 1]."
            raise ValueError(msg)
        self.square_size = (
            None if square_size is None else check_range("square_size", square_size, 1, None, integer=True)
        )
        if placement not in PLACEMENTS:
            msg = f"placement={placement!r} is invalid: accepted values are {PLACEMENTS}."
            raise ValueError(msg)
        self.placement = placement
        if isinstance(modes, str) or not isinstance(modes, Sequence) or len(modes) == 0:
            msg = f"modes={modes!r} is invalid: expected a non-empty sequence of names from {DAMAGE_MODES}."
            raise ValueError(msg)
        canonical = tuple("mask" if m == "black" else m for m in modes)
        unknown = [m for m in canonical if m not in DAMAGE_MODES]
        if unknown or len(set(canonical)) != len(canonical):
            msg = f"modes={tuple(modes)!r} is invalid: accepted names are {DAMAGE_MODES} (or 'black'), each once."
            raise ValueError(msg)
        self.modes = canonical
        if mode_probabilities is None:
            probs = [1.0 / len(canonical)] * len(canonical)
        else:
            if len(mode_probabilities) != len(canonical):
                msg = (
                    f"mode_probabilities={tuple(mode_probabilities)!r} is invalid: expected {len(canonical)} "
                    f"values, one per mode of {canonical}."
                )
                raise ValueError(msg)
            probs = [check_number("mode_probabilities", p, 0.0) for p in mode_probabilities]
            if sum(probs) <= 0:
                msg = f"mode_probabilities={tuple(mode_probabilities)!r} is invalid: the sum must be positive."
                raise ValueError(msg)
        self.mode_probabilities = tuple(p / sum(probs) for p in probs)
        self.probability = check_number("probability", probability, 0.0, 1.0)
        self.blur_sigma_fraction = check_number(
            "blur_sigma_fraction", blur_sigma_fraction, 0.0, None, low_inclusive=False
        )
        self.blur_sigma = (
            None if blur_sigma is None else check_number("blur_sigma", blur_sigma, 0.0, None, low_inclusive=False)
        )
        if blur_kernel_size is not None:
            check_int("blur_kernel_size", blur_kernel_size, 1)
            if blur_kernel_size % 2 == 0:
                msg = f"blur_kernel_size={blur_kernel_size!r} is invalid: accepted values are odd integers >= 1."
                raise ValueError(msg)
        self.blur_kernel_size = blur_kernel_size
        if blur_scope not in BLUR_SCOPES:
            msg = f"blur_scope={blur_scope!r} is invalid: accepted values are {BLUR_SCOPES}."
            raise ValueError(msg)
        self.blur_scope = blur_scope
        self.mask_value = self._check_fill("mask_value", mask_value)
        self.white_value = self._check_fill("white_value", white_value)
        self.seed = None if seed is None else check_int("seed", seed, 0)
        self._private_generator = None

    @staticmethod
    def _check_fill(name: str, value: float | Sequence[float]) -> tuple[float, ...]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (check_number(name, value),)
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
            return tuple(check_number(name, v) for v in value)
        msg = f"{name}={value!r} is invalid: expected a number or one number per channel."
        raise ValueError(msg)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_squares={self.num_squares}, side_fraction={self.side_fraction}, "
            f"square_size={self.square_size}, placement={self.placement!r}, modes={self.modes}, "
            f"probability={self.probability}, blur_scope={self.blur_scope!r}, seed={self.seed})"
        )

    def side_range(self, height: int) -> tuple[int, int]:
        """Inclusive ``(min, max)`` square side in pixels for images of the given height.

        Args:
            height: Image height ``H``.

        Returns:
            ``square_size`` if set, else ``max(1, round(side_fraction * H))`` for both bounds.
        """
        if self.square_size is not None:
            return self.square_size  # type: ignore[return-value]
        return tuple(max(1, round(f * height)) for f in self.side_fraction)  # type: ignore[return-value]

    def sigma(self, height: int) -> float:
        """Blur sigma in pixels for images of the given height (A18).

        Args:
            height: Image height ``H``.

        Returns:
            ``blur_sigma`` if set, else ``blur_sigma_fraction * H``.
        """
        return self.blur_sigma if self.blur_sigma is not None else self.blur_sigma_fraction * height

    def _fill_table(self, name: str, values: tuple[float, ...], channels: int, ref: Tensor) -> Tensor:
        if len(values) not in {1, channels}:
            msg = f"{name} has {len(values)} values but the images have {channels} channels."
            raise ValueError(msg)
        return torch.tensor(values, dtype=ref.dtype, device=ref.device).expand(channels)

    def _sample_squares(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw square corners, sides and validity: each ``(B, N)``, N the largest count."""
        side_lo, side_hi = self.side_range(height)
        side_hi = min(side_hi, height, width)
        side_lo = min(side_lo, side_hi)
        count_lo, count_hi = self.num_squares
        if self.placement == "grid":
            cells_y, cells_x = height // side_hi, width // side_hi
            num_cells = cells_y * cells_x
            count_lo, count_hi = min(count_lo, num_cells), min(count_hi, num_cells)
        counts = randint(count_lo, count_hi + 1, (batch,), generator, device)
        num = count_hi
        sides = randint(side_lo, side_hi + 1, (batch, num), generator, device)
        if self.placement == "uniform":
            ys = randint(0, height - sides + 1, (batch, num), generator, device)
            xs = randint(0, width - sides + 1, (batch, num), generator, device)
        else:
            cells = rand((batch, num_cells), generator, device).argsort(dim=1)[:, :num]
            ys = torch.div(cells, cells_x, rounding_mode="floor") * side_hi
            xs = (cells % cells_x) * side_hi
        valid = torch.arange(num, device=device)[None, :] < counts[:, None]
        return ys, xs, sides, valid

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Damage a batch.

        Args:
            images: ``(B, C, H, W)`` floating-point batch.
            generator: Optional ``torch.Generator`` (any device) to draw from; overrides ``seed``.

        Returns:
            ``(damaged, mask)``: damaged batch like ``images`` and the ``(B, 1, H, W)`` float mask of
            the damaged squares.
        """
        check_images(images)
        gen = self._generator(generator)
        batch, channels, height, width = images.shape
        device = images.device

        damaged_images = rand((batch,), gen, device) < self.probability
        probs = torch.tensor(self.mode_probabilities, device=device)
        mode = torch.searchsorted(probs.cumsum(0)[:-1].contiguous(), rand((batch,), gen, device), right=True)
        ys, xs, sides, valid = self._sample_squares(batch, height, width, gen, device)
        valid &= damaged_images[:, None]
        num = ys.shape[1]
        side_max = int(sides.max()) if num > 0 else 1

        # "Last writer" index map: owner[b, y, x] = largest square index covering the pixel, or -1.
        offsets = torch.arange(side_max, device=device)
        inside = (offsets[None, None, :, None] < sides[..., None, None]) & (
            offsets[None, None, None, :] < sides[..., None, None]
        )
        inside &= valid[..., None, None]  # (B, N, s, s)
        rows = ys[..., None, None] + offsets[:, None]
        cols = xs[..., None, None] + offsets[None, :]
        pixel = torch.where(inside, rows * width + cols, height * width)  # dummy slot for unused cells
        square_id = torch.arange(num, device=device).view(1, num, 1, 1).expand_as(pixel)
        owner = torch.full((batch, height * width + 1), -1, dtype=torch.long, device=device)
        owner = owner.scatter_reduce(1, pixel.reshape(batch, -1), square_id.reshape(batch, -1), reduce="amax")
        owner = owner[:, : height * width].view(batch, 1, height, width)
        region = owner >= 0
        if num == 0 or not bool(region.any()):
            return images.clone(), region.to(images.dtype)

        owner_c = owner.clamp(min=0)
        grid_y = torch.arange(height, device=device).view(1, 1, height, 1)
        grid_x = torch.arange(width, device=device).view(1, 1, 1, width)
        local_y = grid_y - torch.gather(ys, 1, owner_c.flatten(1)).view_as(owner)
        local_x = grid_x - torch.gather(xs, 1, owner_c.flatten(1)).view_as(owner)

        out = images
        mode_of = {name: mode == index for index, name in enumerate(self.modes)}
        for name, values in (("mask", self.mask_value), ("white", self.white_value)):
            if name in mode_of:
                fill = self._fill_table(f"{name}_value", values, channels, images).view(1, channels, 1, 1)
                out = torch.where(region & mode_of[name].view(batch, 1, 1, 1), fill, out)
        if "rgb" in mode_of:
            low = self._fill_table("mask_value", self.mask_value, channels, images)
            high = self._fill_table("white_value", self.white_value, channels, images)
            colour_bits = rand((batch, num, channels), gen, device) < 0.5
            colours = torch.where(colour_bits, high, low)  # (B, N, C)
            colour_px = torch.gather(colours, 1, owner_c.flatten(1)[..., None].expand(-1, -1, channels))
            colour_px = colour_px.transpose(1, 2).reshape(batch, channels, height, width)
            out = torch.where(region & mode_of["rgb"].view(batch, 1, 1, 1), colour_px, out)
        if "cutpaste" in mode_of:
            src_y = randint(0, height - sides + 1, (batch, num), gen, device)
            src_x = randint(0, width - sides + 1, (batch, num), gen, device)
            from_y = torch.gather(src_y, 1, owner_c.flatten(1)).view_as(owner) + local_y
            from_x = torch.gather(src_x, 1, owner_c.flatten(1)).view_as(owner) + local_x
            source = (from_y * width + from_x).where(region, 0).flatten(1)
            pasted = torch.gather(images.flatten(2), 2, source[:, None, :].expand(-1, channels, -1))
            out = torch.where(region & mode_of["cutpaste"].view(batch, 1, 1, 1), pasted.view_as(images), out)
        if "blur" in mode_of and bool(mode_of["blur"].any()):
            blurred = self._blurred_squares(images, ys, xs, sides, valid & mode_of["blur"][:, None], side_max)
            flat = blurred.flatten(3).permute(0, 2, 1, 3).reshape(batch, channels, -1)  # (B, C, N*s*s)
            index = (owner_c * side_max + local_y.clamp(0, side_max - 1)) * side_max + local_x.clamp(0, side_max - 1)
            blur_px = torch.gather(flat, 2, index.flatten(1)[:, None, :].expand(-1, channels, -1))
            out = torch.where(region & mode_of["blur"].view(batch, 1, 1, 1), blur_px.view_as(images), out)
        return out, region.to(images.dtype)

    def _blurred_squares(
        self,
        images: Tensor,
        ys: Tensor,
        xs: Tensor,
        sides: Tensor,
        wanted: Tensor,
        side_max: int,
    ) -> Tensor:
        """Blurred content of every wanted square, ``(B, N, C, s_max, s_max)`` (zeros elsewhere)."""
        # anomalib.models is heavy to import: load the blur helpers only when a blur is needed.
        from anomalib.models.components.filters.blur import GaussianBlur2d, compute_kernel_size

        batch, channels, height, _ = images.shape
        num = ys.shape[1]
        sigma = self.sigma(height)
        kernel_size = self.blur_kernel_size or compute_kernel_size(sigma)
        work_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        result = torch.zeros(batch, num, channels, side_max, side_max, dtype=images.dtype, device=images.device)
        offsets = torch.arange(side_max, device=images.device)
        if self.blur_scope == "image":
            image_ids = wanted.any(dim=1).nonzero().squeeze(1)
            blur = GaussianBlur2d(sigma=sigma, channels=channels, kernel_size=kernel_size, border_type="replicate")
            source = images.clone()
            source[image_ids] = blur.to(images.device)(images[image_ids].to(work_dtype)).to(images.dtype)
            rows = (ys[..., None] + offsets).clamp(max=height - 1)
            cols = (xs[..., None] + offsets).clamp(max=images.shape[-1] - 1)
            b_idx = torch.arange(batch, device=images.device).view(batch, 1, 1, 1)
            crops = source[b_idx, :, rows[..., :, None], cols[..., None, :]]  # (B, N, s, s, C)
            return crops.permute(0, 1, 4, 2, 3).contiguous()
        kernel_1d = get_gaussian_kernel1d(kernel_size, sigma, device=images.device, dtype=work_dtype).view(-1)
        for side in torch.unique(sides[wanted]).tolist():  # one pass per distinct side (one by default)
            b_idx, n_idx = (wanted & (sides == side)).nonzero(as_tuple=True)
            local = offsets[:side]
            rows = ys[b_idx, n_idx][:, None] + local  # (K, s)
            cols = xs[b_idx, n_idx][:, None] + local
            crops = images[b_idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (K, s, s, C)
            crops = crops.permute(0, 3, 1, 2).to(work_dtype)  # (K, C, s, s)
            matrix = replicate_blur_matrix(side, kernel_1d)
            blurred = matrix @ crops @ matrix.T
            result[b_idx, n_idx, :, :side, :side] = blurred.to(images.dtype)
        return result
