"""N2N behaviour: trained briefly on normal images, defects score higher and the map peaks on them.

Fake MVTec data (tests/helpers/datasets.py): striped normal textures, defects are dark or bright
blobs/scratches with exact masks. Training goes through anomalib's Engine (no validation, so no
early stopping); scores are then read from the raw (un-normalised) torch model on the test split.
A prototype run separated every defect from every normal image after ~80 steps (defect scores
0.78-0.85 vs normal 0.62-0.69, argmax <= 2.2 px from the mask); fewer steps do not separate, so
the test can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from PIL import Image

from anomalib_ext.models import N2N
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

SIZE = 64
MAX_ARGMAX_DISTANCE_PX = 3.0


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255


def test_defects_score_higher_and_map_peaks_inside_mask(tmp_path: Path) -> None:
    torch.manual_seed(0)
    root = make_fake_mvtec(tmp_path / "data", image_size=SIZE, n_train=16, n_test_good=4, n_test_defect=6)
    datamodule = MVTecAD(root=root, category="toy", train_batch_size=8, eval_batch_size=8, num_workers=0)
    model = N2N(
        base_channels=8,
        pre_processor=N2N.configure_pre_processor((SIZE, SIZE)),
        lr=2e-3,
        early_stopping_patience=0,
        restore_best_weights=False,  # a fixed schedule: nothing is selected on the (test) validation set
    )
    engine = Engine(
        max_epochs=40,  # 2 steps per epoch: 80 optimiser steps
        default_root_dir=tmp_path / "results",
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model, datamodule=datamodule)

    model.eval()
    test_dir = root / "toy" / "test"
    normal = sorted((test_dir / "good").glob("*.png"))
    defective = sorted(p for d in test_dir.iterdir() if d.name != "good" for p in d.glob("*.png"))
    assert normal
    assert defective
    with torch.no_grad():
        images = torch.stack([_load(p) for p in normal + defective])
        output = model.model(model.pre_processor.transform(images))
    scores, maps = output.pred_score, output.anomaly_map[:, 0]
    normal_scores, defect_scores = scores[: len(normal)], scores[len(normal) :]
    assert defect_scores.mean() > normal_scores.max(), (normal_scores, defect_scores)

    for index, path in enumerate(defective):
        mask_path = root / "toy" / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        mask = np.array(Image.open(mask_path)) > 0
        peak_y, peak_x = divmod(int(maps[len(normal) + index].argmax()), SIZE)
        ys, xs = np.nonzero(mask)
        distance = float(np.sqrt((ys - peak_y) ** 2 + (xs - peak_x) ** 2).min())
        assert distance <= MAX_ARGMAX_DISTANCE_PX, (path.name, (peak_y, peak_x), distance)
