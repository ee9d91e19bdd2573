"""Building blocks shared by the package's models: the mixin of shared concerns, scoring, frozen-feature cache."""

from .base import AnomalibExtModule
from .feature_cache import FrozenFeatureCache
from .scoring import AnomalyScorer, ScoreMode, ScoreModeName, image_score

__all__ = ["AnomalibExtModule", "AnomalyScorer", "FrozenFeatureCache", "ScoreMode", "ScoreModeName", "image_score"]
