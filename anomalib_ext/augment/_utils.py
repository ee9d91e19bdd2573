"""Shared helpers of the augmentation classes: parameter checks and random draws.

Every augmentation draws its randomness from one ``torch.Generator``: the one passed to
``__call__``, else a private generator seeded from the constructor's ``seed``, else torch's global
RNG. Draws happen on the generator's own device and are then moved to the images' device, so a CPU
generator drives CUDA images too, and one seed gives the same corruption on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def check_number(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a float after checking that it is a finite number in the given range.

    Args:
        name: Parameter name, used in the error message.
        value: The value to check.
        low: Lower bound, or ``None`` for no bound.
        high: Upper bound, or ``None`` for no bound.
        low_inclusive: Whether ``low`` itself is accepted.
        high_inclusive: Whether ``high`` itself is accepted.

    Returns:
        The value as a float.

    Raises:
        ValueError: If ``value`` is not a finite real number inside the range.
    """
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    accepted = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"{name}={value!r} is invalid: expected a finite number in {accepted}."
        raise ValueError(msg)
    too_low = low is not None and (value < low or (not low_inclusive and value == low))
    too_high = high is not None and (value > high or (not high_inclusive and value == high))
    if too_low or too_high:
        msg = f"{name}={value!r} is out of range: accepted range is {accepted}."
        raise ValueError(msg)
    return float(value)


def check_int(name: str, value: int, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` after checking that it is an integer in ``[low, high]``.

    Args:
        name: Parameter name, used in the error message.
        value: The value to check.
        low: Smallest accepted value, or ``None``.
        high: Largest accepted value, or ``None``.

    Returns:
        The value as an int.

    Raises:
        ValueError: If ``value`` is not an integer inside the range.
    """
    accepted = f"integers in [{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name}={value!r} is invalid: expected {accepted}."
        raise ValueError(msg)  # noqa: TRY004 (one exception type for every invalid parameter)
    if (low is not None and value < low) or (high is not None and value > high):
        msg = f"{name}={value!r} is out of range: accepted values are {accepted}."
        raise ValueError(msg)
    return int(value)


def check_range(
    name: str,
    value: float | Sequence[float],
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
) -> tuple[float, float] | tuple[int, int]:
    """Normalise a scalar or a ``(min, max)`` pair to a checked ``(min, max)`` tuple.

    Lists are accepted (YAML/jsonargparse produce lists) and become tuples.

    Args:
        name: Parameter name, used in the error message.
        value: A number (meaning ``(value, value)``) or a pair ``(min, max)``.
        low: Smallest accepted value, or ``None``.
        high: Largest accepted value, or ``None``.
        integer: Whether the values must be integers.

    Returns:
        The checked ``(min, max)`` tuple.

    Raises:
        ValueError: If the value is not a number or a pair, is out of range, or has ``min > max``.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        pair = (value[0], value[1])
    else:
        msg = f"{name}={value!r} is invalid: expected a number or a (min, max) pair."
        raise ValueError(msg)
    if integer:
        checked = tuple(
            check_int(name, v, None if low is None else int(low), None if high is None else int(high)) for v in pair
        )
    else:
        checked = tuple(check_number(name, v, low, high) for v in pair)
    if checked[0] > checked[1]:
        msg = f"{name}={value!r} is invalid: min {checked[0]} is larger than max {checked[1]}."
        raise ValueError(msg)
    return checked  # type: ignore[return-value]


def check_images(images: Tensor, name: str = "images") -> None:
    """Check that ``images`` is a floating-point ``(B, C, H, W)`` tensor.

    Args:
        images: The batch to check.
        name: Name used in the error message.

    Raises:
        TypeError: If ``images`` is not a floating-point tensor.
        ValueError: If it does not have four dimensions.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point():
        msg = f"{name} must be a floating-point torch.Tensor, got {type(images).__name__}"
        msg += f" of dtype {images.dtype}." if isinstance(images, Tensor) else "."
        raise TypeError(msg)
    if images.dim() != 4:
        msg = f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}."
        raise ValueError(msg)


class SeededRandomness:
    """Mixin that resolves which ``torch.Generator`` a call draws from.

    Subclasses set ``self.seed`` (``int | None``) and call :meth:`_generator` at the start of
    ``__call__``.
    """

    seed: int | None
    _private_generator: torch.Generator | None = None

    def _generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        """Return the generator to draw from in this call.

        Args:
            generator: The generator passed to ``__call__``, if any.

        Returns:
            ``generator`` if given; else a private CPU generator seeded once from ``seed`` (so a
            sequence of calls is reproducible); else ``None`` (torch's global RNG).
        """
        if generator is not None:
            return generator
        if self.seed is None:
            return None
        if self._private_generator is None:
            self._private_generator = torch.Generator().manual_seed(self.seed)
        return self._private_generator

    def reset(self) -> None:
        """Restart the private generator from ``seed``: the next calls repeat the first ones."""
        self._private_generator = None


def rand(size: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) float32 draws, made on the generator's device and moved to ``device``.

    Args:
        size: Output shape.
        generator: Source of randomness, or ``None`` for the global RNG.
        device: Device of the returned tensor.

    Returns:
        A float32 tensor on ``device``.
    """
    if generator is None:
        return torch.rand(tuple(size), device=device)
    return torch.rand(tuple(size), generator=generator, device=generator.device).to(device)


def randn(size: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard normal float32 draws, made on the generator's device and moved to ``device``.

    Args:
        size: Output shape.
        generator: Source of randomness, or ``None`` for the global RNG.
        device: Device of the returned tensor.

    Returns:
        A float32 tensor on ``device``.
    """
    if generator is None:
        return torch.randn(tuple(size), device=device)
    return torch.randn(tuple(size), generator=generator, device=generator.device).to(device)


def randint(
    low: int | Tensor,
    high: int | Tensor,
    size: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Integers uniform in ``[low, high)``; ``low``/``high`` may be tensors broadcastable to ``size``.

    Args:
        low: Inclusive lower bound (int or tensor).
        high: Exclusive upper bound (int or tensor), ``high > low``.
        size: Output shape.
        generator: Source of randomness, or ``None`` for the global RNG.
        device: Device of the returned tensor.

    Returns:
        An int64 tensor on ``device``.
    """
    u = rand(size, generator, device).double()
    low_t = torch.as_tensor(low, device=device)
    high_t = torch.as_tensor(high, device=device)
    span = (high_t - low_t).double()
    return (low_t + torch.minimum((u * span).floor(), span - 1)).long()


def rank_generator(seed: int | None, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with ``seed + rank``, so each DDP process draws different corruptions.

    Args:
        seed: Base seed; ``None`` takes torch's initial seed (the one ``seed_everything`` set).
        rank: The process's global rank.
        device: Device of the generator.

    Returns:
        The seeded generator.
    """
    base = torch.initial_seed() if seed is None else seed
    return torch.Generator(device=device).manual_seed((int(base) + int(rank)) % 2**63)
