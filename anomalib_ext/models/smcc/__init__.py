"""SMCC: self-updated memory bank with GMM centre clustering (Liu et al., IEEE TIM 2023).

Example:
    >>> from anomalib_ext.models.smcc import SMCC
    >>> model = SMCC(backbone="efficientnet_lite0", layers=["blocks.1", "blocks.2", "blocks.4", "blocks.6"])
"""

from .lightning_model import SMCC

__all__ = ["SMCC"]
