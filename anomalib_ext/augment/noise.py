"""Gaussian noise blending, the corruption of N2N (noise-to-norm reconstruction).

Paper: "Noise-to-Norm Reconstruction for Industrial Anomaly Detection and Localization" (Deng,
Sun, Zhuang, Gong; Applied Sciences 13, 12436, 2023, https://doi.org/10.3390/app132212436).

N2N trains a reconstruction network on normal images blended with Gaussian noise,
``x' = (1 - lambda) * x + lambda * eps`` with ``eps ~ N(mu, sigma)`` (Eq. 1; paper: lambda 0.3,
mu 0.5, sigma 0.5), and applies the same blending at test time: the noise partly hides a
defect's local appearance, so the network restores it as normal texture instead of copying it,
and the reconstruction error marks the defect.

:class:`NoiseBlend` implements Eq. 1 on batches. The noise can be drawn in two spaces
(``noise_space``), which matters because N2N's images are normalised with mean 0.5 and std 0.5
(pixel range [0, 1] becomes [-1, 1]):

- ``"normalized"`` (default, the literal Eq. 1): ``eps ~ N(mu, sigma)`` is drawn directly in the
  space the images are in, with no mapping. On normalised N2N images this is the paper's formula;
  on [0, 1] images it is plain pixel-space blending.
- ``"pixel"``: the images are normalised with ``norm_mean``/``norm_std``; ``eps`` is drawn in
  pixel units and mapped through the same normalisation, ``(eps - norm_mean) / norm_std``, before
  blending. This equals un-normalising, blending in [0, 1] pixel space and re-normalising.

For reproducible evaluation (and export, where random ops must not be in the graph) draw the
noise once with :meth:`NoiseBlend.sample_noise` from a seeded generator, keep it as a buffer, and
blend with :meth:`NoiseBlend.blend`, which is pure tensor arithmetic.

Example:
    >>> import torch
    >>> from anomalib_ext.augment import NoiseBlend
    >>> blend = NoiseBlend(noise_lambda=0.3, noise_mean=0.5, noise_std=0.5)   # paper values
    >>> images = torch.rand(4, 3, 64, 64) * 2 - 1          # normalised with mean 0.5, std 0.5
    >>> noisy, mask = blend(images, generator=torch.Generator().manual_seed(0))
    >>> noisy.shape, float(mask.mean())                    # every pixel is changed
    (torch.Size([4, 3, 64, 64]), 1.0)
    >>> # test time: one fixed noise tensor, then a deterministic blend
    >>> eval_noise = blend.sample_noise((1, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    >>> torch.equal(blend.blend(images, eval_noise), blend.blend(images, eval_noise))
    True

See Also:
    - :mod:`anomalib_ext.augment.damage`: random square damage (MLDFR).
    - :mod:`anomalib_ext.augment.perlin`: Perlin-shaped foreign-texture defects (RB-AE).
    - Spec: section 2.2 and assumptions A9, A10, A29 of ``methods/n2n.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from anomalib_ext.augment._utils import SeededRandomness, check_images, check_int, check_number, randn

NOISE_SPACES = ("normalized", "pixel")


def _channel_values(name: str, value: float | Sequence[float], *, positive: bool = False) -> tuple[float, ...]:
    low = 0.0 if positive else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (check_number(name, value, low, None, low_inclusive=not positive),)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        return tuple(check_number(name, v, low, None, low_inclusive=not positive) for v in value)
    msg = f"{name}={value!r} is invalid: expected a number or one number per channel."
    raise ValueError(msg)


class NoiseBlend(SeededRandomness):
    """Blend images with Gaussian noise: ``x' = (1 - lambda) x + lambda eps`` (N2N, Eq. 1).

    Args:
        noise_lambda: Blend weight lambda in [0, 1]; paper 0.3 (Sec. 4.4.1, Table 4). 0 returns the
            input unchanged with an all-zero mask.
        noise_mean: A9: mean mu of ``eps ~ N(mu, sigma)`` (default 0.5, paper).
        noise_std: A9: standard deviation sigma of eps, >= 0 (default 0.5; N(0.5, 0.5) read as
            (mean, std), not (mean, variance)).
        noise_space: A9: ``"normalized"`` (default; eps drawn directly in the images' space, the
            literal Eq. 1 on normalised images) or ``"pixel"`` (eps drawn in pixel units and mapped
            through ``(eps - norm_mean) / norm_std``, i.e. blending in [0, 1] space). See the
            module docstring.
        norm_mean: Per-channel (or scalar) mean of the images' normalisation, used only by
            ``noise_space="pixel"``; default 0.5 (N2N's pre-processor).
        norm_std: Per-channel (or scalar) std of that normalisation, > 0; default 0.5.
        clamp_range: A9: ``None`` (default, the paper: no clipping, so ``x'`` may leave the input
            range) or ``(low, high)`` to clamp ``x'`` in the images' space (e.g. ``(0.0, 1.0)`` for
            pixel images, ``(-1.0, 1.0)`` for N2N-normalised ones).
        seed: Seed of a private generator used when ``__call__`` gets no generator; ``None``
            (default) draws from torch's global RNG. A10: for a fixed test-time noise use
            :meth:`sample_noise` + :meth:`blend`, or pass a freshly seeded generator per call.

    Returns (from ``__call__``):
        ``(noisy, mask)``: the blended batch (same shape, dtype and device) and a ``(B, 1, H, W)``
        float mask: all ones when ``noise_lambda > 0`` (noise blending changes every pixel), all
        zeros when it is 0.

    Example:
        >>> import torch
        >>> from anomalib_ext.augment import NoiseBlend
        >>> blend = NoiseBlend(noise_lambda=0.3, noise_space="pixel", seed=0)
        >>> x0 = torch.zeros(8, 3, 32, 32)                 # normalised mid-grey (pixel 0.5)
        >>> noisy, mask = blend(x0)
        >>> # pixel-space noise N(0.5, 0.5) becomes N(0, 1) after normalisation: x' = 0.3 * N(0, 1)
        >>> round(float(noisy.std()), 1)
        0.3
    """

    def __init__(
        self,
        noise_lambda: float = 0.3,
        noise_mean: float = 0.5,
        noise_std: float = 0.5,
        noise_space: str = "normalized",
        norm_mean: float | Sequence[float] = 0.5,
        norm_std: float | Sequence[float] = 0.5,
        clamp_range: Sequence[float] | None = None,
        seed: int | None = None,
    ) -> None:
        self.noise_lambda = check_number("noise_lambda", noise_lambda, 0.0, 1.0)
        self.noise_mean = check_number("noise_mean", noise_mean)
        self.noise_std = check_number("noise_std", noise_std, 0.0)
        if noise_space not in NOISE_SPACES:
            msg = f"noise_space={noise_space!r} is invalid: accepted values are {NOISE_SPACES}."
            raise ValueError(msg)
        self.noise_space = noise_space
        self.norm_mean = _channel_values("norm_mean", norm_mean)
        self.norm_std = _channel_values("norm_std", norm_std, positive=True)
        if clamp_range is not None:
            if isinstance(clamp_range, str) or not isinstance(clamp_range, Sequence) or len(clamp_range) != 2:
                msg = f"clamp_range={clamp_range!r} is invalid: expected None or a (low, high) pair."
                raise ValueError(msg)
            low, high = (check_number("clamp_range", v) for v in clamp_range)
            if low >= high:
                msg = f"clamp_range={clamp_range!r} is invalid: low must be smaller than high."
                raise ValueError(msg)
            clamp_range = (low, high)
        self.clamp_range = clamp_range
        self.seed = None if seed is None else check_int("seed", seed, 0)
        self._private_generator = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(noise_lambda={self.noise_lambda}, noise_mean={self.noise_mean}, "
            f"noise_std={self.noise_std}, noise_space={self.noise_space!r}, clamp_range={self.clamp_range}, "
            f"seed={self.seed})"
        )

    def _per_channel(self, values: tuple[float, ...], name: str, channels: int, ref: Tensor) -> Tensor:
        if len(values) not in {1, channels}:
            msg = f"{name} has {len(values)} values but the images have {channels} channels."
            raise ValueError(msg)
        return torch.tensor(values, dtype=ref.dtype, device=ref.device).expand(channels).view(1, channels, 1, 1)

    def sample_noise(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw ``eps ~ N(noise_mean, noise_std)`` in the noise space (before any mapping).

        Use it once with a seeded generator to build a fixed test-time noise (A10), then pass it to
        :meth:`blend`. The draw is made on the generator's device, so a CPU generator gives the
        same noise on every device.

        Args:
            shape: ``(K, C, H, W)`` or ``(B, C, H, W)``.
            generator: Source of randomness; ``None`` uses ``seed`` / the global RNG.
            device: Device of the result (default: CPU).
            dtype: Dtype of the result (default float32).

        Returns:
            The noise tensor.
        """
        gen = self._generator(generator)
        device = torch.device("cpu") if device is None else torch.device(device)
        return (randn(shape, gen, device) * self.noise_std + self.noise_mean).to(dtype)

    def blend(self, images: Tensor, noise: Tensor) -> Tensor:
        """Deterministic part of Eq. 1: ``(1 - lambda) x + lambda * map(noise)``, then the optional clamp.

        Pure tensor arithmetic (traceable, exportable). ``map`` is the identity in
        ``"normalized"`` space and ``(eps - norm_mean) / norm_std`` in ``"pixel"`` space.

        Args:
            images: ``(B, C, H, W)`` batch.
            noise: Noise from :meth:`sample_noise`, broadcastable to ``images`` (e.g. ``(1, C, H, W)``).

        Returns:
            The blended batch with the dtype and device of ``images``.
        """
        # Half precision: blend in float32 and round once at the end.
        work = images.float() if images.dtype in {torch.float16, torch.bfloat16} else images
        noise = noise.to(device=work.device, dtype=work.dtype)
        if self.noise_space == "pixel":
            channels = work.shape[1]
            mean = self._per_channel(self.norm_mean, "norm_mean", channels, work)
            std = self._per_channel(self.norm_std, "norm_std", channels, work)
            noise = (noise - mean) / std
        out = (1.0 - self.noise_lambda) * work + self.noise_lambda * noise
        if self.clamp_range is not None:
            out = out.clamp(*self.clamp_range)
        return out.to(images.dtype)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Blend a batch with fresh noise.

        Args:
            images: ``(B, C, H, W)`` floating-point batch.
            generator: Optional ``torch.Generator`` (any device) to draw from; overrides ``seed``.

        Returns:
            ``(noisy, mask)``: the blended batch and the ``(B, 1, H, W)`` float mask (ones if
            ``noise_lambda > 0``, else zeros).
        """
        check_images(images)
        batch, _, height, width = images.shape
        mask_value = 1.0 if self.noise_lambda > 0 else 0.0
        mask = torch.full((batch, 1, height, width), mask_value, dtype=images.dtype, device=images.device)
        if self.noise_lambda == 0:
            return images.clone(), mask
        noise = self.sample_noise(images.shape, generator, images.device, torch.float32)
        if images.dtype == torch.float64:
            noise = noise.double()
        return self.blend(images, noise), mask
