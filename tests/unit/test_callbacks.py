"""PredictionsWriter's rows, thresholds and argument checks, on hand-made batches (no training)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from anomalib.post_processing import PostProcessor

from anomalib_ext.callbacks import PREDICTION_COLUMNS, PredictionsWriter


def module(post_processor: object) -> SimpleNamespace:
    return SimpleNamespace(post_processor=post_processor, visualizer=None)


TRAINER = SimpleNamespace(callbacks=[], datamodule=None)
SCORES = torch.tensor([0.1, 0.5, 0.55, 0.9])


def batch(**fields) -> SimpleNamespace:
    defaults = {
        "image_path": [f"/line/{i}.png" for i in range(4)],
        "pred_score": SCORES.clone(),
        "pred_label": SCORES > 0.5,
        "gt_label": None,
    }
    return SimpleNamespace(**{**defaults, **fields})


def test_rows_keep_the_models_decision_and_threshold_by_default() -> None:
    rows = PredictionsWriter().rows(batch(), TRAINER, module(PostProcessor()))
    assert [list(row) for row in rows] == [list(PREDICTION_COLUMNS)] * 4
    assert [row["label"] for row in rows] == [0, 0, 1, 1]
    assert {row["threshold"] for row in rows} == {0.5}
    assert [row["score"] for row in rows] == pytest.approx(SCORES.tolist())
    assert [row["heat_map"] for row in rows] == [None] * 4


@pytest.mark.parametrize(("threshold", "labels"), [(0.3, [0, 1, 1, 1]), (0.55, [0, 0, 0, 1]), (0.95, [0, 0, 0, 0])])
def test_threshold_decides_on_the_score_strictly_above(threshold: float, labels: list[int]) -> None:
    rows = PredictionsWriter(threshold=threshold).rows(batch(), TRAINER, module(PostProcessor()))
    assert [row["label"] for row in rows] == labels
    assert {row["threshold"] for row in rows} == {threshold}


def test_model_threshold_follows_the_post_processors_sensitivity() -> None:
    assert PredictionsWriter().model_threshold(module(PostProcessor(image_sensitivity=0.3))) == pytest.approx(0.7)


def test_model_threshold_is_the_raw_one_without_normalisation() -> None:
    post_processor = PostProcessor(enable_normalization=False)
    post_processor._image_threshold.fill_(4.25)
    assert PredictionsWriter().model_threshold(module(post_processor)) == 4.25


@pytest.mark.parametrize("post_processor", [PostProcessor(enable_thresholding=False), None, False])
def test_no_decision_without_thresholding_or_post_processor(post_processor: object) -> None:
    rows = PredictionsWriter().rows(batch(pred_label=None), TRAINER, module(post_processor))
    assert [row["label"] for row in rows] == [None] * 4
    assert [row["threshold"] for row in rows] == [None] * 4


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), "0.5", True])
def test_bad_threshold_is_refused(threshold: object) -> None:
    with pytest.raises(ValueError, match=r"PredictionsWriter threshold=.* is invalid: expected a finite number"):
        PredictionsWriter(threshold=threshold)  # type: ignore[arg-type]


@pytest.mark.parametrize("file_name", ["", "out/predictions"])
def test_bad_file_name_is_refused(file_name: str) -> None:
    with pytest.raises(ValueError, match=r"file_name=.* is invalid: expected a plain file stem"):
        PredictionsWriter(file_name=file_name)
