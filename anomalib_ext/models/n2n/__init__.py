"""N2N: Noise-to-Norm Reconstruction for Industrial Anomaly Detection and Localization.

See :mod:`anomalib_ext.models.n2n.lightning_model` and the model README.
"""

from .lightning_model import N2N

__all__ = ["N2N"]
