"""N2N behaviour: trained on normal stripes only, it finds defects that stay inside the normal grey range.

The data (``tests/helpers/behaviour.py``) has rotated, finer, blurred and warped stripes and both
contrast polarities, all inside the normal intensity range: the zero-learning baseline (distance to the
mean training image) fails it, and so does the same N2N before training. Training goes through anomalib's
Engine with no validation (a fixed schedule, so no early stopping or best-epoch selection).

Measured 2026-12-03 (64 px, 16 training images, base width 8, batch 8, 40 epochs = 80 optimiser steps,
about 30 s of training), image AUROC / pixel AUROC / AUPRO through ``Engine.test``, seeds 0, 1, 2:
1.000/0.980/0.939, 1.000/0.988/0.962, 1.000/0.983/0.949; after 20 epochs only 0.674/0.852/0.563 and
0.542/0.833/0.526 (seeds 1, 2), hence 40. Untrained (raw outputs): pixel AUROC 0.706-0.708.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.behaviour import behaviour_data, check_training_finds_defects

pytestmark = pytest.mark.slow

# what a trained N2N must reach; min_training_gain: raw pixel AUROC that training must add (measured gain: 0.27-0.28)
FLOORS = {"min_image_auroc": 0.95, "min_pixel_auroc": 0.95, "min_aupro": 0.85, "min_training_gain": 0.15}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return behaviour_data(
        tmp_path_factory.mktemp("n2n_behaviour"), FLOORS["min_image_auroc"], FLOORS["min_pixel_auroc"], n_train=16
    )


def test_trained_n2n_finds_in_range_defects_that_it_did_not_before_training(data_root: Path, tmp_path: Path) -> None:
    check_training_finds_defects("N2N", data_root, tmp_path, **FLOORS)
