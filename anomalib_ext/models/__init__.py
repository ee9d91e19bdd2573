"""The models of anomalib-ext, each a direct :class:`anomalib.models.components.AnomalibModule` subclass."""

__all__: list[str] = []
