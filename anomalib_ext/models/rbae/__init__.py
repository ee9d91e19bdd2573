"""RB-AE: Reference-Based Autoencoder for Surface Defect Detection.

Example:
    >>> from anomalib_ext.models.rbae import RBAE
    >>> model = RBAE(pre_trained=False)  # doctest: +SKIP
"""

from anomalib_ext.models.rbae.lightning_model import RBAE

__all__ = ["RBAE"]
