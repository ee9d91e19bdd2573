"""Registration of the package's models and datamodules with anomalib.

anomalib 2.7 finds models in two ways, and neither sees a third-party package on its own:

- the CLI (jsonargparse) resolves ``--model MLDFR`` among the ``AnomalibModule`` subclasses that are
  *already imported*, so the plugin must be imported before the command line is parsed;
- :func:`anomalib.models.get_model` matches names against the *direct* subclasses of
  ``AnomalibModule`` and only imports ``class_path`` modules from a whitelist (``ALLOWED_MODULES``).

:func:`register` imports the models and datamodules and whitelists ``anomalib_ext.models``. It runs
when ``anomalib_ext`` is imported; the CLI imports ``anomalib_ext`` through a start-up hook
(``_anomalib_ext_autoload``, installed as a ``.pth`` file), so ``anomalib train --model MLDFR`` works in a
new shell. ``docs/upstream.md`` proposes the entry-point group that would make this module unnecessary.

Example:
    >>> import anomalib_ext  # noqa: F401  (registers)
    >>> from anomalib.models import get_model
    >>> model = get_model("mldfr")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

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


def register() -> None:
    """Make every model and datamodule of the package visible to anomalib's CLI and ``get_model``.

    Raises:
        TypeError: A model is not a direct ``AnomalibModule`` subclass, which ``get_model`` would miss.
    """
    import anomalib.models
    from anomalib.models.components import AnomalibModule

    for name, cls in registered_models().items():
        if AnomalibModule not in cls.__bases__:
            msg = f"{MODEL_PACKAGE}.{name} must subclass AnomalibModule directly for anomalib.models.get_model."
            raise TypeError(msg)
    registered_datamodules()
    anomalib.models.ALLOWED_MODULES.add(MODEL_PACKAGE)
