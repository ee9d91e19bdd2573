"""The smallest settings of every registered model, for tests of the user's path (not of accuracy).

This is the ONE place tests name model constructor arguments for such runs: the contract suite
(``tests/integration/test_contract.py``), the own-images tests and the pipeline tests build models
from here. Each entry runs the model's whole training (every phase, corruption, bank or cache) on
64 px images in a few optimiser steps, with random-weight backbones where the model allows it.

``TINY[name]`` holds ``init_args`` (constructor arguments, CLI spelling), ``image_size`` and
``max_epochs``; :func:`build` makes the model with a resize-only or ImageNet pre-processor as the
model's own ``configure_pre_processor`` says; :func:`fit_tiny` trains it through anomalib's ``Engine`` on
a fake MVTec AD (:func:`toy_datamodule`); :func:`without_post_processing` gives a copy whose outputs
(and exports) are the raw maps and scores.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor

from anomalib_ext.registry import registered_models

SIZE = 64

TINY: dict[str, dict[str, Any]] = {
    "FMGRD": {
        "init_args": {
            "backbone": "efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2", "blocks.4"],
            "pre_trained": False,
            # the offline config's two widths and score levels: export, OpenVINO parity, reload
            "scoring": {"sigma": 2.0, "score_sigma": 1.0, "score_levels": [1, 2]},
        },
        "max_epochs": 1,
    },
    "MLDFR": {
        "init_args": {
            "cnn_backbone": "efficientnet_lite0",
            "cnn_layers": [1, 2, 3],
            "vit_backbone": None,
            "pre_trained": False,
            "restorer": {"num_blocks": 1},
        },
        "max_epochs": 1,
    },
    "N2N": {
        "init_args": {"base_channels": 8, "early_stopping_patience": 0, "restore_best_weights": False},
        "max_epochs": 1,
    },
    "RBAE": {
        "init_args": {
            "network": {"encoder_channels": [8, 16, 32, 32, 32], "ffm_mid_channels": 16},
            "perceptual_backbone": "efficientnet_lite0",
            "perceptual_layers": [0, 1, 2],
            "pre_trained": False,
        },
        "max_epochs": 2,
    },
    "SMCC": {
        "init_args": {
            "backbone": "efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2"],
            "pre_trained": False,
            "n_components": 2,
            "memory_bank_images": 4,
        },
        "max_epochs": 1,
    },
}


def build(name: str, size: int = SIZE, **overrides: Any) -> AnomalibModule:
    """The tiny ``name`` model for ``size`` x ``size`` inputs (``overrides`` win over the tiny arguments)."""
    cls = registered_models()[name]
    init_args = {**copy.deepcopy(TINY[name]["init_args"]), **overrides}
    init_args.setdefault("pre_processor", cls.configure_pre_processor(image_size=(size, size)))
    return cls(**init_args)


def toy_datamodule(root: Path) -> MVTecAD:
    """anomalib's MVTec AD datamodule on the ``toy`` category that ``make_fake_mvtec`` writes under ``root``."""
    return MVTecAD(root=root, category="toy", train_batch_size=4, eval_batch_size=4, num_workers=0)


def fit_tiny(name: str, data_root: Path, results: Path) -> tuple[AnomalibModule, Engine]:
    """The tiny ``name`` model (seed 0) trained for its tiny schedule through ``Engine.fit``; ``(model, engine)``."""
    torch.manual_seed(0)
    model = build(name)
    engine = Engine(
        max_epochs=TINY[name]["max_epochs"], default_root_dir=results, accelerator="cpu", devices=1, logger=False
    )
    engine.fit(model=model, datamodule=toy_datamodule(data_root))
    return model, engine


def without_post_processing(model: AnomalibModule) -> AnomalibModule:
    """A copy of ``model`` whose post-processor neither normalises nor thresholds (raw maps and scores)."""
    plain = copy.deepcopy(model)
    plain.post_processor = PostProcessor(enable_normalization=False, enable_thresholding=False)
    return plain
