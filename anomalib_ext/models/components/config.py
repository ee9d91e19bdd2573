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
    known = {item.name: item for item in fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(known))
    if unknown:
        msg = f"{config_class.__name__} has no field {', '.join(unknown)}: accepted fields are {list(known)}."
        raise TypeError(msg)
    return config_class(**{key: _field_value(known[key], item) for key, item in value.items()})


def _field_value(field: Field, value: Any) -> Any:
    """A field's value from plain data: a mapping for a nested group becomes the group, a list a tuple."""
    if isinstance(value, Mapping):
        default = field.default if field.default_factory is MISSING else field.default_factory()
        if is_dataclass(default):
            return as_config(type(default), value)
    return tuple(value) if isinstance(value, list) else value
