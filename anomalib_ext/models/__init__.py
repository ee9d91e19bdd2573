"""The models of anomalib-ext, each a direct :class:`anomalib.models.components.AnomalibModule` subclass."""

from .fmgrd import FMGRD
from .mldfr import MLDFR
from .n2n import N2N
from .rbae import RBAE
from .smcc import SMCC

__all__: list[str] = ["FMGRD", "MLDFR", "N2N", "RBAE", "SMCC"]
