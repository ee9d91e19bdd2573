"""Datasets: DAGM 2007 (new datamodule) and the offline ``DemoTextures`` dataset.

anomalib's own ``MVTecAD``, ``Visa``, ``MPDD`` and ``BTech`` (BTAD) are used as they are; see
``configs/data/`` and ``docs/datasets.md``.
"""

from anomalib_ext.data.dagm import DAGM, DAGMDataset, make_dagm_dataset
from anomalib_ext.data.demo import DemoTextures

__all__ = ["DAGM", "DAGMDataset", "DemoTextures", "make_dagm_dataset"]
