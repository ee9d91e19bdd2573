"""Datasets: DAGM 2007 (new datamodule), ELPV solar cells, the offline ``DemoTextures`` dataset, and ``BTAD``.

anomalib's own ``MVTecAD``, ``Visa`` and ``MPDD`` are used as they are; ``BTAD`` is anomalib's
``BTech`` reading manually downloaded copies (``.bmp`` masks of product 03). See ``configs/data/``
and ``docs/datasets.md``.
"""

from anomalib_ext.data.btad import BTAD, BTADDataset, make_btad_dataset
from anomalib_ext.data.dagm import DAGM, DAGMDataset, make_dagm_dataset
from anomalib_ext.data.demo import DemoTextures
from anomalib_ext.data.elpv import ELPV, ELPVDataset, make_elpv_dataset

__all__ = [
    "BTAD",
    "DAGM",
    "ELPV",
    "BTADDataset",
    "DAGMDataset",
    "DemoTextures",
    "ELPVDataset",
    "make_btad_dataset",
    "make_dagm_dataset",
    "make_elpv_dataset",
]
