"""Synthetic corruptions for anomaly detection, as batched, reproducible callables.

Three families, one module each, used by the models of this package and usable on their own:

- :class:`RandomPatchDamage` (:mod:`~anomalib_ext.augment.damage`): many small blurred, black or
  white squares (MLDFR).
- :class:`PerlinTextureAnomaly` (:mod:`~anomalib_ext.augment.perlin`): Perlin-noise-shaped regions
  filled with a foreign texture (RB-AE, DRAEM-style).
- :class:`NoiseBlend` (:mod:`~anomalib_ext.augment.noise`): ``(1 - lambda) x + lambda * eps`` with
  Gaussian ``eps`` (N2N).

All share one contract, in the style of kornia's augmentations: parameters are validated in
``__init__`` (errors name the parameter, the value and the accepted range), and
``__call__(images, generator=None) -> (corrupted, mask)`` takes a ``(B, C, H, W)`` floating-point
batch on any device and returns the corrupted batch (same shape, dtype and device) and a
``(B, 1, H, W)`` float mask in {0, 1} of what was changed. Randomness comes from the ``generator``
argument, else from a private generator seeded by the constructor's ``seed``, else from torch's
global RNG. Under DDP, seed the generator per rank (:func:`rank_generator`, ``seed + global_rank``)
so that ranks do not apply identical corruptions.

Example:
    >>> import torch
    >>> from anomalib_ext.augment import NoiseBlend, PerlinTextureAnomaly, RandomPatchDamage
    >>> images = torch.rand(4, 3, 64, 64)
    >>> gen = torch.Generator().manual_seed(0)
    >>> for corruption in (RandomPatchDamage(), PerlinTextureAnomaly(), NoiseBlend()):
    ...     corrupted, mask = corruption(images, generator=gen)
    ...     assert corrupted.shape == images.shape and mask.shape == (4, 1, 64, 64)
"""

from anomalib_ext.augment._utils import rank_generator
from anomalib_ext.augment.damage import RandomPatchDamage
from anomalib_ext.augment.noise import NoiseBlend
from anomalib_ext.augment.perlin import PerlinTextureAnomaly

__all__ = ["NoiseBlend", "PerlinTextureAnomaly", "RandomPatchDamage", "rank_generator"]
