"""MLDFR: multilevel feature restoration from damaged images.

Example:
    >>> from anomalib_ext.models.mldfr import MLDFR
    >>> model = MLDFR()  # doctest: +SKIP
"""

from anomalib_ext.models.mldfr.lightning_model import MLDFR

__all__ = ["MLDFR"]
