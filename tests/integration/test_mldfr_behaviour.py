"""MLDFR behaviour: trained on normal stripes only, it finds defects that stay inside the normal grey range.

The data (``tests/helpers/behaviour.py``) has rotated, finer, blurred and warped stripes and both
contrast polarities, all inside the normal intensity range: the zero-learning baseline (distance to the
mean training image) fails it, and so does the same MLDFR before training (frozen ImageNet encoder,
random restorer). The model is the offline variant of ``configs/model/mldfr_cpu.yaml`` (EfficientNet-Lite0
taps ``blocks.1/2/4``, no CaiT) with 2 restoration blocks, no feature LayerNorm (with it: pixel AUROC 0.821,
seed 0) and talking-heads attention
instead of the configs' ViT attention: at this size ViT attention trains unsteadily (numbers below); on
real ELPV images it was not worse (model README, "Attention"), so the configs keep the paper's.

Measured 2026-12-03 (64 px, 16 training images, 12 epochs, 4 s of training), image AUROC / pixel AUROC /
AUPRO through ``Engine.test``, seeds 0, 1, 2: talking-heads attention (CaiT's, the public code's)
1.000/0.883/0.613, 1.000/0.886/0.623, 1.000/0.893/0.651; ViT's standard attention (the paper's text)
0.722/0.634/0.226, 0.764/0.653/0.238, 1.000/0.825/0.502, and it got worse from 6 to 12 epochs (seed 0:
pixel 0.817 to 0.634). Untrained (raw outputs): pixel AUROC 0.25-0.51. The standard attention is also
why the former test of this file (map maximum within 4 px of a painted blob) started to fail
(``git bisect`` between 32aecbc and 16aa1f7, confirmed by switching the attention back).

What this test does not see: a restorer trained without the damage (its input = the intact image) also
passes (pixel AUROC 0.923, seed 0), so on this data the learned normal feature mapping, not the damage,
finds the defects; that the damage reaches the restorer's input is checked by value in
``tests/unit/test_mldfr_lightning.py`` (the training loss equals the loss on the damaged images).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_ext.models import MLDFR
from anomalib_ext.models.mldfr.config import RestorerConfig
from tests.helpers.behaviour import CATEGORY, make_behaviour_dataset, raw_auroc, zero_learning_auroc

pytestmark = pytest.mark.slow

SIZE = 64
EPOCHS = 12
MIN_IMAGE_AUROC = 0.95
MIN_PIXEL_AUROC = 0.85
MIN_AUPRO = 0.5
# training must add this much pixel AUROC over the same model before training
MIN_TRAINING_GAIN = 0.2


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_behaviour_dataset(tmp_path_factory.mktemp("mldfr_behaviour"), n_train=16)
    image_auroc, pixel_auroc = zero_learning_auroc(root)
    assert image_auroc < MIN_IMAGE_AUROC  # the data needs learning
    assert pixel_auroc < MIN_PIXEL_AUROC
    return root


def test_trained_mldfr_finds_in_range_defects_that_it_did_not_before_training(data_root: Path, tmp_path: Path) -> None:
    seed_everything(0)  # restorer initialisation, damage and batch order
    datamodule = MVTecAD(root=data_root, category=CATEGORY, train_batch_size=4, eval_batch_size=24, num_workers=0)
    model = MLDFR(
        cnn_backbone="efficientnet_lite0",
        cnn_layers=[1, 2, 3],
        vit_backbone=None,
        restorer=RestorerConfig(num_blocks=2, attention_type="talking_heads"),
        sigma=8.0 * SIZE / 384,
        pre_processor=MLDFR.configure_pre_processor((SIZE, SIZE)),
        visualizer=False,
    )
    _, untrained_pixel = raw_auroc(model, datamodule)
    engine = Engine(
        max_epochs=EPOCHS,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    _, trained_pixel = raw_auroc(model, datamodule)
    print(f"MLDFR behaviour: {metrics}, raw pixel AUROC untrained {untrained_pixel:.3f} trained {trained_pixel:.3f}")
    assert metrics["image_AUROC"] >= MIN_IMAGE_AUROC
    assert metrics["pixel_AUROC"] >= MIN_PIXEL_AUROC
    assert metrics["pixel_AUPRO"] >= MIN_AUPRO
    assert trained_pixel >= untrained_pixel + MIN_TRAINING_GAIN
