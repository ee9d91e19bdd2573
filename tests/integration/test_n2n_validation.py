"""N2N through anomalib's Engine with a normal-only validation split (issue 15).

- Metrics are computed on the order of the raw maps: with ``val_split_mode: from_train`` anomalib's
  default post-processor clamps every score above the normal range to 1, so defect pixels tie with
  the raised background of defective images; N2N's default post-processor must not.
- Early stopping and best-epoch selection must never look at test images: fitting with them on a
  datamodule whose validation set is its test set is refused with a message naming the fix.

The maps are hand-made (the grey level of the image, see :class:`_GreyLevelMaps`) so that the raw
metrics are known exactly: 1.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch, MVTecAD
from anomalib.engine import Engine
from anomalib.post_processing import PostProcessor
from PIL import Image
from torch import Tensor, nn

from anomalib_ext.models import N2N
from anomalib_ext.post_processing import OrderPreservingPostProcessor

pytestmark = pytest.mark.slow

SIZE = 32
NORMAL, BACKGROUND, DEFECT = 0.2, 0.6, 0.9  # grey levels: normal images, defective images, defects


def _save(grey: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(grey, 0, 1) * 255).round().astype(np.uint8)).convert("RGB").save(path)


def _write_dataset(root: Path) -> Path:
    """MVTec layout: normal images at grey 0.2 (+-0.02 noise); defective ones at 0.6 with a 0.9 square."""
    rng = np.random.default_rng(0)
    base = root / "toy"
    for split, count in (("train", 8), ("test", 4)):
        for i in range(count):
            _save(NORMAL + rng.uniform(-0.02, 0.02, (SIZE, SIZE)), base / split / "good" / f"{i:03d}.png")
    for i in range(4):
        grey = np.full((SIZE, SIZE), BACKGROUND)
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        top, left = 4 + 4 * i, 20 - 4 * i
        grey[top : top + 8, left : left + 8] = DEFECT
        mask[top : top + 8, left : left + 8] = 255
        _save(grey, base / "test" / "square" / f"{i:03d}.png")
        Image.fromarray(mask).save(_mkdir(base / "ground_truth" / "square") / f"{i:03d}_mask.png")
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class _GreyLevelMaps(nn.Module):
    """Stands in for ``N2NModel``: the map is the image's grey level in [0, 1], the score its maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(()))  # something for the optimiser to hold

    def forward(self, clean: Tensor, generator: object = None) -> tuple[Tensor, Tensor] | InferenceBatch:
        del generator
        if self.training:
            return clean + self.offset, clean
        grey = clean.mean(dim=1, keepdim=True) * 0.5 + 0.5  # un-normalise (mean = std = 0.5)
        return InferenceBatch(pred_score=grey.amax(dim=(-3, -2, -1)), anomaly_map=grey)


def _fit_and_test(tmp_path: Path, **kwargs: object) -> dict[str, float]:
    root = _write_dataset(tmp_path / "data")
    datamodule = MVTecAD(
        root=root,
        category="toy",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        val_split_mode="from_train",
        val_split_ratio=0.5,
        seed=0,
    )
    model = N2N(base_channels=4, pre_processor=N2N.configure_pre_processor((SIZE, SIZE)), visualizer=False, **kwargs)
    model.model = _GreyLevelMaps()
    engine = Engine(
        max_epochs=1,
        default_root_dir=tmp_path / "results",
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model, datamodule=datamodule)
    return engine.test(model, datamodule=datamodule, verbose=False)[0]


def test_default_post_processor_keeps_the_order_of_the_maps(tmp_path: Path) -> None:
    assert isinstance(
        N2N(base_channels=4, pre_processor=N2N.configure_pre_processor((SIZE, SIZE))).post_processor,
        OrderPreservingPostProcessor,
    )
    metrics = _fit_and_test(tmp_path)
    # raw maps: every defect pixel (0.9) is above every other pixel (<= 0.6) -> exactly 1
    for name in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_F1Max", "pixel_AUPR"):
        assert metrics[name] == pytest.approx(1.0, abs=1e-6), (name, metrics)


def test_anomalib_default_post_processor_would_tie_the_defects(tmp_path: Path) -> None:
    # The failure the default above avoids: normal range [0.18, 0.22] from the from_train split,
    # so both 0.6 and 0.9 are clamped to 1 and the defect pixels tie with their background.
    metrics = _fit_and_test(tmp_path, post_processor=PostProcessor())
    assert metrics["pixel_AUROC"] < 0.9, metrics
    assert metrics["pixel_AUPRO"] < 0.9, metrics


@pytest.mark.parametrize(
    "selection",
    [{"early_stopping_patience": 3}, {"early_stopping_patience": 0, "restore_best_weights": True}],
)
def test_selection_on_the_test_set_is_refused(tmp_path: Path, selection: dict) -> None:
    root = _write_dataset(tmp_path / "data")
    datamodule = MVTecAD(root=root, category="toy", train_batch_size=4, eval_batch_size=4, num_workers=0)
    assert datamodule.val_split_mode == "same_as_test"  # anomalib's default for MVTec-like data
    model = N2N(base_channels=4, pre_processor=N2N.configure_pre_processor((SIZE, SIZE)), visualizer=False, **selection)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    with pytest.raises(ValueError, match="val_split_mode from_train") as error:
        engine.fit(model, datamodule=datamodule)
    assert "same_as_test" in str(error.value)
    assert "MVTecAD" in str(error.value)


def test_a_fixed_schedule_may_validate_on_the_test_set(tmp_path: Path) -> None:
    # no selection on val_loss: the validation pass only sets the post-processor's statistics
    root = _write_dataset(tmp_path / "data")
    datamodule = MVTecAD(root=root, category="toy", train_batch_size=4, eval_batch_size=4, num_workers=0)
    model = N2N(
        base_channels=4,
        pre_processor=N2N.configure_pre_processor((SIZE, SIZE)),
        visualizer=False,
        early_stopping_patience=0,
        restore_best_weights=False,
    )
    engine = Engine(max_epochs=1, default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    engine.fit(model, datamodule=datamodule)
    assert engine.trainer.current_epoch == 1
