"""Building blocks shared by the package's models: shared concerns, parameter groups, scoring, feature cache."""

from .base import AnomalibExtModule
from .config import as_config, group_arguments
from .feature_cache import FrozenFeatureCache
from .scoring import AnomalyScorer, GaussianBlur, ScoreMode, ScoreModeName, image_score

__all__ = [
    "AnomalibExtModule",
    "AnomalyScorer",
    "FrozenFeatureCache",
    "GaussianBlur",
    "ScoreMode",
    "ScoreModeName",
    "as_config",
    "group_arguments",
    "image_score",
]
