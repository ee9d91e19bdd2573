"""Start-up hook: import ``anomalib_ext`` when (and only when) anomalib's CLI is imported.

Installed as ``anomalib_ext_autoload.pth``, this module runs at every interpreter start, so it stays
tiny: it imports nothing heavy and puts one finder on ``sys.meta_path``. The finder waits for the
import of ``anomalib.cli``; once that module has executed, it imports ``anomalib_ext``, which
registers the package's models and datamodules before the command line is parsed. A plain
``python -c pass`` therefore imports neither torch nor the plugin.
"""

import sys
from importlib.machinery import ModuleSpec, PathFinder

TRIGGER = "anomalib.cli"
PLUGIN = "anomalib_ext"


# Duck-typed finder and loader: importlib.abc would cost ~30 ms at every interpreter start.
class _ImportPluginAfter:
    """Runs the real loader of ``anomalib.cli``, then imports the plugin."""

    def __init__(self, loader: object) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> object:
        return self.loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self.loader.exec_module(module)
        try:
            __import__(PLUGIN)
        except Exception as error:  # noqa: BLE001  (a broken plugin must not break anomalib's own models)
            import warnings

            warnings.warn(f"{PLUGIN} could not be loaded, its models are unavailable: {error!r}", stacklevel=2)


class AnomalibCliFinder:
    """Finds ``anomalib.cli`` like the normal path finder, with a loader that imports the plugin after it."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname != TRIGGER:
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ImportPluginAfter(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, AnomalibCliFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AnomalibCliFinder())


install()
