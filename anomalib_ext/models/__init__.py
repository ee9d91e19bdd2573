"""The models of anomalib-ext, each a direct :class:`anomalib.models.components.AnomalibModule` subclass."""

from .rbae import RBAE

__all__: list[str] = ["RBAE"]
