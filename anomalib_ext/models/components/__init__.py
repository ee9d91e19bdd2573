"""Building blocks shared by the package's models."""

from .feature_cache import FrozenFeatureCache

__all__ = ["FrozenFeatureCache"]
