"""Parameter groups given as plain mappings: one conversion for every model's Lightning ``__init__``.

jsonargparse builds a model's frozen dataclass groups (``--model.training.lr_step_size 1``) itself; a
mapping reaches the constructor when a model is built from Python with plain data (``get_model`` with a
dict of ``init_args``, a JSON file, a test). :func:`as_config` turns it into the group, so that
``AnomalibModule`` saves the same hyper-parameters either way.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Group:
    ...     size: tuple[int, int] = (1, 1)
    >>> as_config(Group, {"size": [2, 3]})
    Group(size=(2, 3))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, TypeVar

__all__ = ["as_config"]

ConfigT = TypeVar("ConfigT")


def as_config(config_class: type[ConfigT], value: ConfigT | Mapping[str, Any] | None) -> ConfigT:
    """``value`` as a ``config_class`` instance.

    Args:
        config_class: A dataclass (a model's parameter group).
        value: An instance (returned as is), ``None`` (the defaults) or a mapping of its fields; YAML/JSON
            lists become tuples, as the groups' fields are, and a mapping for a nested group (FMGRD's
            ``bottleneck.attention``) becomes that group.

    Raises:
        TypeError: ``value`` names a field ``config_class`` does not have (the message lists the fields),
            or is neither an instance nor a mapping.
    """
    if value is None:
        return config_class()
    if isinstance(value, config_class):
        return value
    if not isinstance(value, Mapping):
        msg = f"Expected a {config_class.__name__} or a mapping of its fields, got {value!r}."
        raise TypeError(msg)
    names = [item.name for item in fields(config_class)]  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(names))
    if unknown:
        msg = f"{config_class.__name__} has no field {', '.join(unknown)}: accepted fields are {names}."
        raise TypeError(msg)
    nested = {item.name: _default(item) for item in fields(config_class)}  # type: ignore[arg-type]
    return config_class(**{key: _field_value(nested[key], item) for key, item in value.items()})


def _default(item: Field) -> Any:
    """A dataclass field's default value (``None`` when it has none)."""
    if item.default is not MISSING:
        return item.default
    return item.default_factory() if item.default_factory is not MISSING else None


def _field_value(default: Any, value: Any) -> Any:
    """A field's value from plain data: a mapping for a nested group becomes the group, a list a tuple."""
    if is_dataclass(default) and isinstance(value, Mapping):
        return as_config(type(default), value)
    return tuple(value) if isinstance(value, list) else value
