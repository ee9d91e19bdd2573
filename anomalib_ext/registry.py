"""Registration of the package's models and datamodules with anomalib.

anomalib 2.7 finds models in two ways, and neither sees a third-party package on its own:

- the CLI (jsonargparse) resolves ``--model MLDFR`` among the ``AnomalibModule`` subclasses that are
  *already imported*, so the plugin must be imported before the command line is parsed;
- :func:`anomalib.models.get_model` matches names against the *direct* subclasses of
  ``AnomalibModule`` and only imports ``class_path`` modules from a whitelist (``ALLOWED_MODULES``).
- :func:`anomalib.data.get_datamodule`, which anomalib's pipelines (``anomalib benchmark``, the tiled
  ensemble) use, keeps only the last component of a ``class_path`` and looks it up as an attribute of
  the ``anomalib.data`` module: ``"anomalib_ext.data.DAGM"`` and ``"DAGM"`` both mean
  ``anomalib.data.DAGM``. ``get_model({"class_path": "SMCC"})`` likewise looks in ``anomalib.models``.

:func:`register` imports the models and datamodules, whitelists ``anomalib_ext.models`` and adds each
datamodule (model) class to the ``anomalib.data`` (``anomalib.models``) namespace under its class name,
never replacing a class anomalib has under that name (that case is warned about and skipped), and,
when the environment variable ``ANOMALIB_EXT_OFFLINE_BACKBONES=1`` is set, gives anomalib's own models
their backbone weights through :mod:`anomalib_ext.backbones` (offline). It runs
when ``anomalib_ext`` is imported; the CLI imports ``anomalib_ext`` through a start-up hook
(``_anomalib_ext_autoload``, installed as a ``.pth`` file), so ``anomalib train --model MLDFR`` works in a
new shell. ``docs/upstream.md`` proposes the entry-point group that would make this module unnecessary.

Example:
    >>> import anomalib_ext  # noqa: F401  (registers)
    >>> from anomalib.models import get_model
    >>> model = get_model("mldfr")  # doctest: +SKIP
    >>> from anomalib.data import get_datamodule
    >>> datamodule = get_datamodule({"class_path": "DAGM", "init_args": {"category": "Class1"}})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import warnings

MODEL_PACKAGE = "anomalib_ext.models"
DATA_PACKAGE = "anomalib_ext.data"


def registered_models() -> dict[str, type]:
    """The package's model classes by class name, imported."""
    module = importlib.import_module(MODEL_PACKAGE)
    return {name: getattr(module, name) for name in module.__all__}


def registered_datamodules() -> dict[str, type]:
    """The package's datamodule classes by class name, imported."""
    from anomalib.data import AnomalibDataModule

    module = importlib.import_module(DATA_PACKAGE)
    names = getattr(module, "__all__", [])
    classes = {name: getattr(module, name) for name in names}
    return {name: cls for name, cls in classes.items() if isinstance(cls, type) and issubclass(cls, AnomalibDataModule)}


def _add_to_namespace(module: object, classes: dict[str, type], package: str) -> dict[str, type]:
    """Set each class as an attribute of ``module`` unless another class already has the name (warned)."""
    added = {}
    for name, cls in classes.items():
        existing = getattr(module, name, None)
        if existing is not None and existing is not cls:
            namespace = module.__name__
            msg = (
                f"{namespace} already defines {name} ({getattr(existing, '__module__', '?')}.{name}); "
                f"{package}.{name} is not added to it, so a config naming '{name}' (or any class_path ending "
                f"in '.{name}') gets anomalib's class from {namespace}'s look-ups. Build {package}.{name} "
                "directly, or use it through anomalib's CLI, which reads the full class path."
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            continue
        setattr(module, name, cls)
        added[name] = cls
    return added


def register_datamodules() -> dict[str, type]:
    """Add the package's datamodules to the ``anomalib.data`` namespace, for ``get_datamodule``.

    A name anomalib already uses for another class is left to anomalib, with a warning: replacing
    one of anomalib's own datamodules would change what every anomalib config means.

    Returns:
        The datamodules now resolvable by ``anomalib.data.get_datamodule``, by class name.
    """
    import anomalib.data

    return _add_to_namespace(anomalib.data, registered_datamodules(), DATA_PACKAGE)


def register_model_names() -> dict[str, type]:
    """Add the package's models to the ``anomalib.models`` namespace.

    ``get_model({"class_path": "SMCC"})`` (the form anomalib's pipeline configs use, ``class_path:
    Padim``) looks the name up as an attribute of ``anomalib.models``; the string form
    ``get_model("smcc")`` and full class paths work without this. Same rule as
    :func:`register_datamodules` for names anomalib already uses.

    Returns:
        The models added, by class name.
    """
    import anomalib.models

    return _add_to_namespace(anomalib.models, registered_models(), MODEL_PACKAGE)


def register() -> None:
    """Make every model and datamodule of the package visible to anomalib's CLI, ``get_model`` and ``get_datamodule``.

    Raises:
        TypeError: A model is not a direct ``AnomalibModule`` subclass, which ``get_model`` would miss.
        ValueError: ``ANOMALIB_EXT_OFFLINE_BACKBONES`` has a value other than on/off words.
    """
    import anomalib.models
    from anomalib.models.components import AnomalibModule

    for name, cls in registered_models().items():
        if AnomalibModule not in cls.__bases__:
            msg = f"{MODEL_PACKAGE}.{name} must subclass AnomalibModule directly for anomalib.models.get_model."
            raise TypeError(msg)
    register_model_names()
    register_datamodules()
    anomalib.models.ALLOWED_MODULES.add(MODEL_PACKAGE)
    # opt-in: anomalib's own models (PaDiM, PatchCore, ...) get their backbone weights offline too
    from anomalib_ext.backbones import offline_anomalib_backbones_from_env

    offline_anomalib_backbones_from_env()
