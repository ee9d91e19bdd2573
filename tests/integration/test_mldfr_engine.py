"""Integration tests of MLDFR: Engine fit/test/predict, ONNX/OpenVINO export parity, checkpoints, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from PIL import Image

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


def test_fit_test_predict(trained: tuple[Engine, MLDFR, MVTecAD, Path]) -> None:
    engine, model, datamodule, _ = trained
    results = engine.test(model, datamodule=datamodule)
    for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert 0.0 <= results[0][metric] <= 1.0
    predictions = engine.predict(model, datamodule=datamodule)
    batch = predictions[0]
    assert batch.anomaly_map.shape[-2:] == IMAGE_SIZE
    assert batch.pred_score.numel() == batch.image.shape[0]


def test_checkpoint_reloads_with_weights_only(trained: tuple[Engine, MLDFR, MVTecAD, Path]) -> None:
    engine, model, _, _ = trained
    checkpoint = (
        engine.trainer.checkpoint_callback.best_model_path or engine.trainer.checkpoint_callback.last_model_path
    )
    assert checkpoint
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)  # plain data only
    assert "model.restorer.pos_embed" in raw["state_dict"]
    reloaded = MLDFR.load_from_checkpoint(checkpoint, map_location="cpu")  # weights_only=True by default
    for key, value in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value.cpu(), rtol=0, atol=0)
    image = torch.rand(2, 3, *IMAGE_SIZE)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(image).anomaly_map, model.model(image).anomaly_map)


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


@pytest.mark.parametrize("export_type", [ExportType.ONNX, ExportType.OPENVINO])
def test_export_matches_torch(
    export_type: ExportType,
    trained: tuple[Engine, MLDFR, MVTecAD, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, model, _, tmp_path = trained
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes an openvino_cache folder into the cwd
    export_root = tmp_path / f"export_{export_type.value}"
    path = engine.export(model, export_type, export_root=export_root, input_size=IMAGE_SIZE)
    assert path is not None
    assert Path(path).exists()
    model_file = Path(path) if export_type == ExportType.ONNX else Path(path).with_suffix(".xml")
    inferencer = OpenVINOInferencer(model_file, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})

    image_path = sorted((tmp_path / "data" / "toy" / "test").rglob("*.png"))[-1]
    image = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    model.eval()
    with torch.no_grad():
        expected = model(tensor)  # pre-processor + model + post-processor, as exported
    result = inferencer.predict(image)
    np.testing.assert_allclose(
        np.asarray(result.anomaly_map).reshape(IMAGE_SIZE),
        expected.anomaly_map.numpy().reshape(IMAGE_SIZE),
        rtol=RTOL,
        atol=ATOL,
    )
    np.testing.assert_allclose(
        np.asarray(result.pred_score).ravel(), expected.pred_score.numpy().ravel(), rtol=RTOL, atol=ATOL
    )


def test_cli_trains_by_short_name(tmp_path: Path) -> None:
    root = make_fake_mvtec(tmp_path / "data", n_train=3, n_test_good=1, n_test_defect=1)
    anomalib = Path(sys.executable).parent / "anomalib"
    command = [
        str(anomalib),
        "fit",
        "--model",
        "MLDFR",
        "--model.cnn_backbone",
        "efficientnet_lite0",
        "--model.cnn_layers",
        "[1, 2, 3]",
        "--model.vit_backbone",
        "null",
        "--model.features.deep_branch",
        "true",
        "--model.restorer.num_blocks",
        "1",
        "--model.pre_trained",
        "false",
        "--data",
        "anomalib.data.MVTecAD",
        "--data.root",
        str(root),
        "--data.category",
        "toy",
        "--data.train_batch_size",
        "3",
        "--data.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--default_root_dir",
        str(tmp_path / "results"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "max_epochs=1" in completed.stdout + completed.stderr
