"""SMCC end to end on tiny fake MVTec data: Engine fit/test/predict, export, OpenVINO parity, reload, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine

from anomalib_ext.models import SMCC
from anomalib_ext.models.smcc.config import FeatureConfig, ScoringConfig
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

SIZE = 64
TINY = {
    "backbone": "efficientnet_lite0",
    "layers": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "pre_trained": False,
    "image_size": (SIZE, SIZE),
    "n_components": 3,
    "memory_bank_images": 4,
    "features": FeatureConfig(fusion_layer_index=1),
    # several bank chunks (bank: 4 images x 64 patches), so the export covers the chunk loop
    "scoring": ScoringConfig(knn_chunk_size=100),
}
# Torch (fp32) vs OpenVINO compiled with INFERENCE_PRECISION_HINT=f32, same pre-resized image; both pass the
# same post-processor (scores normalised to [0, 1]).
PARITY_ATOL = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("smcc_engine")
    data_root = make_fake_mvtec(root / "data", image_size=SIZE, n_train=10, n_test_good=2, n_test_defect=2)
    datamodule = MVTecAD(root=data_root, category="toy", train_batch_size=4, eval_batch_size=4, num_workers=0)
    model = SMCC(**TINY)
    engine = Engine(max_epochs=1, default_root_dir=root / "results", accelerator="cpu", devices=1)
    engine.fit(model, datamodule=datamodule)
    return {"root": root, "data_root": data_root, "datamodule": datamodule, "model": model, "engine": engine}


def test_fit_builds_centres_and_a_one_batch_bank(trained: dict) -> None:
    model = trained["model"].model
    assert bool(model.centres_fitted)
    assert model.centres.shape == (3, 496)
    # 10 training images in batches of 4, 4, 2: the short last batch never replaces the bank (T11)
    assert model.memory_bank.shape == (4 * 8 * 8, 496)
    assert not model.bank_stale
    with torch.no_grad():
        expected = model.to_patches(model.eval().embed(model.bank_images))
    torch.testing.assert_close(model.memory_bank, expected)  # refreshed with the final weights (A18)


def test_fit_test_predict(trained: dict) -> None:
    engine, model, datamodule = trained["engine"], trained["model"], trained["datamodule"]
    results = engine.test(model, datamodule=datamodule)
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(results[0])
    batch = engine.predict(model, datamodule=datamodule)[0]
    assert batch.anomaly_map.shape[-2:] == (SIZE, SIZE)
    assert batch.pred_score.shape == (batch.image.shape[0],)
    assert torch.isfinite(batch.anomaly_map).all()


def test_checkpoint_reloads_with_weights_only(trained: dict) -> None:
    path = Path(trained["root"]) / "smcc.ckpt"
    trained["engine"].trainer.save_checkpoint(path)
    reloaded = SMCC.load_from_checkpoint(path, weights_only=True)
    original = trained["model"].model.state_dict()
    for key, value in reloaded.model.state_dict().items():
        torch.testing.assert_close(value, original[key])
    assert bool(reloaded.model.centres_fitted)  # stage 0 is skipped when training resumes (T14)
    image = torch.rand(2, 3, SIZE, SIZE)
    trained["model"].eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image).anomaly_map, trained["model"](image).anomaly_map)
    results = Engine(accelerator="cpu", devices=1, default_root_dir=trained["root"] / "t").test(
        SMCC(**TINY), datamodule=trained["datamodule"], ckpt_path=path
    )
    assert "image_AUROC" in results[0]


@pytest.mark.parametrize("export_type", [ExportType.ONNX, ExportType.OPENVINO])
def test_export_and_openvino_parity(
    trained: dict, export_type: ExportType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ./openvino_cache
    model, engine = trained["model"], trained["engine"]
    path = engine.export(model, export_type, export_root=tmp_path, input_size=(SIZE, SIZE))
    assert path is not None
    assert Path(path).exists()
    inferencer = OpenVINOInferencer(path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    model.eval()
    for batch_size in (1, 2):  # dynamic batch (T9)
        image = torch.rand(batch_size, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch_size))
        ov_out = inferencer.predict(image)
        with torch.no_grad():
            torch_out = model(image)
        torch.testing.assert_close(
            torch.as_tensor(ov_out.anomaly_map).reshape(torch_out.anomaly_map.shape),
            torch_out.anomaly_map,
            atol=PARITY_ATOL,
            rtol=0,
        )
        torch.testing.assert_close(
            torch.as_tensor(ov_out.pred_score).reshape(torch_out.pred_score.shape),
            torch_out.pred_score,
            atol=PARITY_ATOL,
            rtol=0,
        )


def test_cli_trains_by_short_name(trained: dict, tmp_path: Path) -> None:
    anomalib = Path(sys.executable).parent / "anomalib"
    options = {
        "--model": "SMCC",
        "--model.backbone": "efficientnet_lite0",
        "--model.layers": "[blocks.1, blocks.2]",
        "--model.pre_trained": "false",
        "--model.image_size": f"[{SIZE}, {SIZE}]",
        "--model.n_components": "2",
        "--model.memory_bank_images": "4",
        "--data": "anomalib.data.MVTecAD",
        "--data.root": str(trained["data_root"]),
        "--data.category": "toy",
        "--data.train_batch_size": "4",
        "--data.eval_batch_size": "4",
        "--data.num_workers": "0",
        "--trainer.max_epochs": "1",
        "--trainer.accelerator": "cpu",
        "--trainer.devices": "1",
        "--default_root_dir": str(tmp_path),
    }
    command = [str(anomalib), "fit", *[part for item in options.items() for part in item]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.rglob("*.ckpt"))
