"""What only MLDFR needs beyond the contract suite (``test_contract.py``): reloading a checkpoint saved at
an input size other than the default rebuilds the restorer for that size."""

from __future__ import annotations

from pathlib import Path

import pytest
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_ext.models import MLDFR
from anomalib_ext.models.mldfr.config import FeatureConfig, RestorerConfig
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

IMAGE_SIZE = (64, 64)
# OpenVINO compiled with f32 (the CPU plugin defaults to bf16 here) vs torch: relative tolerance.
RTOL, ATOL = 1e-3, 1e-4


def _model() -> MLDFR:
    return MLDFR(
        cnn_backbone="efficientnet_lite0",
        cnn_layers=[1, 2, 3],
        vit_backbone=None,
        sigma=2.0,
        features=FeatureConfig(deep_branch=True),
        restorer=RestorerConfig(num_blocks=2),
        pre_processor=MLDFR.configure_pre_processor(IMAGE_SIZE),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, MLDFR, MVTecAD, Path]:
    tmp_path = tmp_path_factory.mktemp("mldfr_engine")
    root = make_fake_mvtec(tmp_path / "data", n_train=6, n_test_good=2, n_test_defect=2)
    datamodule = MVTecAD(root=root, category="toy", train_batch_size=3, eval_batch_size=4, num_workers=0)
    model = _model()
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    engine.fit(model, datamodule=datamodule)
    return engine, model, datamodule, tmp_path


def test_reload_rebuilds_restorer_for_a_saved_input_size_other_than_the_default(
    trained: tuple[Engine, MLDFR, MVTecAD, Path],
) -> None:
    engine, _, _, _ = trained
    checkpoint = (
        engine.trainer.checkpoint_callback.best_model_path or engine.trainer.checkpoint_callback.last_model_path
    )
    reloaded = MLDFR.load_from_checkpoint(checkpoint, map_location="cpu")
    assert tuple(reloaded.input_size) == IMAGE_SIZE
    assert reloaded.model.restorer.pos_embed.shape[1] == (IMAGE_SIZE[0] // 16) * (IMAGE_SIZE[1] // 16)
