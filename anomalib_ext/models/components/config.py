"""Parameter groups given as plain mappings: one conversion for every model's Lightning ``__init__``.

jsonargparse builds a model's frozen dataclass groups (``--model.training.lr_step_size 1``) itself; a
mapping reaches the constructor when a model is built from Python with plain data (``get_model`` with a
dict of ``init_args``, a JSON file, a test). :func:`as_config` turns it into the group, and
:func:`group_arguments`, the decorator on every model's ``__init__``, applies it to each argument whose
default is a group before the body runs, so that ``AnomalibModule`` saves the same hyper-parameters
either way.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Group:
    ...     size: tuple[int, int] = (1, 1)
    >>> as_config(Group, {"size": [2, 3]})
    Group(size=(2, 3))
    >>> @group_arguments
    ... def build(group: Group = Group()) -> Group:
    ...     return group
    >>> build({"size": [4, 4]}), build(None)
    (Group(size=(4, 4)), Group(size=(1, 1)))
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, ParamSpec, TypeVar

__all__ = ["as_config", "group_arguments"]

ConfigT = TypeVar("ConfigT")
P = ParamSpec("P")
R = TypeVar("R")


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


def group_arguments(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate a model's ``__init__``: every argument whose default is a group arrives as that group.

    A mapping of the group's fields or ``None`` given for such an argument is converted with
    :func:`as_config` before ``function`` runs, so its body (and the hyper-parameters ``AnomalibModule``
    reads from its frame) sees the group. The signature stays the one jsonargparse and ``--help`` show.
    """
    signature = inspect.signature(function)
    groups = {name: type(p.default) for name, p in signature.parameters.items() if is_dataclass(p.default)}

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = signature.bind(*args, **kwargs)
        for name, config_class in groups.items():
            if name in bound.arguments:
                bound.arguments[name] = as_config(config_class, bound.arguments[name])
        return function(*bound.args, **bound.kwargs)

    return wrapper
