"""The smallest settings of every registered model, for tests of the user's path (not of accuracy).

This is the ONE place tests name model constructor arguments for such runs: the contract suite
(``tests/integration/test_contract.py``), the own-images tests and the pipeline tests build models
from here. Each entry runs the model's whole training (every phase, corruption, bank or cache) on
64 px images in a few optimiser steps, with random-weight backbones where the model allows it.

``TINY[name]`` holds ``init_args`` (constructor arguments, CLI spelling), ``image_size`` and
``max_epochs``; :func:`build` makes the model with a resize-only or ImageNet pre-processor as the
model's own ``configure_pre_processor`` says.
"""

from __future__ import annotations

import copy
from typing import Any

from anomalib.models.components import AnomalibModule

from anomalib_ext.registry import registered_models

SIZE = 64

TINY: dict[str, dict[str, Any]] = {
    "FMGRD": {
        "init_args": {
            "backbone": "efficientnet_lite0",
            "layers": ["blocks.1", "blocks.2", "blocks.4"],
            "pre_trained": False,
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
