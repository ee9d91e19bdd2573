"""The behaviour-test data defeat the zero-learning baselines, so passing them needs learning."""

import numpy as np
from PIL import Image

from tests.helpers.behaviour import CATEGORY, DEFECT_KINDS, make_behaviour_dataset, zero_learning_auroc


def test_distance_to_the_mean_training_image_does_not_find_the_defects(tmp_path) -> None:
    image_auroc, pixel_auroc = zero_learning_auroc(make_behaviour_dataset(tmp_path))
    assert image_auroc < 0.7
    assert pixel_auroc < 0.6


def test_defects_stay_inside_the_normal_grey_range_with_both_polarities(tmp_path) -> None:
    category = make_behaviour_dataset(tmp_path) / CATEGORY
    normal = np.stack([np.asarray(Image.open(p)) for p in (category / "train" / "good").glob("*.png")])
    kinds = {p.name for p in (category / "test").iterdir()} - {"good"}
    assert kinds == set(DEFECT_KINDS)
    for path in (category / "test").glob("*/*.png"):
        image = np.asarray(Image.open(path))
        assert normal.min() <= image.min(), path
        assert image.max() <= normal.max(), path
    brightness_score = {  # |grey - 0.5|, the other zero-learning baseline, peaks no higher on defects
        path.parent.name: np.abs(np.asarray(Image.open(path)) / 255 - 0.5).max()
        for path in (category / "test").glob("*/*.png")
    }
    assert max(brightness_score.values()) <= np.abs(normal / 255 - 0.5).max()
