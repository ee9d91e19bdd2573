"""FMGRD: reverse distillation with an SCSAtt bottleneck and feature mask generation.

See :mod:`anomalib_ext.models.fmgrd.lightning_model`.
"""

from .lightning_model import FMGRD
from .loss import FmgrdLoss
from .torch_model import FmgrdModel

__all__ = ["FMGRD", "FmgrdLoss", "FmgrdModel"]
