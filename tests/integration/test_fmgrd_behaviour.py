"""FMGRD behaviour: trained on normal stripes only, it finds defects that stay inside the normal grey range.

The data (``tests/helpers/behaviour.py``) has rotated, finer, blurred and warped stripes and both
contrast polarities, all inside the normal intensity range, 12 defective and 12 normal test images
(anomalib's default split also validates on them): the zero-learning baseline (distance to the
mean training image) fails it, and so does the same FMGRD before training (frozen ImageNet teacher,
random student). Measured 2026-12-03 (64 px, 16 training images, 5 epochs, 4 s of training), image/pixel
AUROC and AUPRO through ``Engine.test``: 1.000/0.941/0.816, 1.000/0.932/0.794 and 1.000/0.927/0.785 for
seeds 0, 1 and 2; untrained (raw outputs): 0.500/0.348, 0.736/0.457, 0.438/0.565; baseline 0.625/0.379.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.behaviour import behaviour_data, check_training_finds_defects

pytestmark = pytest.mark.slow

# what a trained FMGRD must reach; min_training_gain: raw pixel AUROC that training must add (measured gain: 0.36-0.59)
FLOORS = {"min_image_auroc": 0.95, "min_pixel_auroc": 0.9, "min_aupro": 0.7, "min_training_gain": 0.2}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return behaviour_data(
        tmp_path_factory.mktemp("fmgrd_behaviour"), FLOORS["min_image_auroc"], FLOORS["min_pixel_auroc"], n_train=16
    )


def test_trained_fmgrd_finds_in_range_defects_that_it_did_not_before_training(data_root: Path, tmp_path: Path) -> None:
    check_training_finds_defects("FMGRD", data_root, tmp_path, **FLOORS)
