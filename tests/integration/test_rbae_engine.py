"""RB-AE through anomalib's Engine, exports, inferencer parity, checkpoints and the CLI (tiny data)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine

from anomalib_ext.models import RBAE
from anomalib_ext.models.rbae.config import NetworkConfig, Phase1Config, Phase2Config
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

SIZE = 64
TINY = {
    "pre_processor": RBAE.configure_pre_processor((SIZE, SIZE)),
    "network": NetworkConfig(encoder_channels=(8, 16, 32, 32, 32), ffm_mid_channels=16),
    "perceptual_backbone": "efficientnet_lite0",
    "perceptual_layers": (0, 1, 2),
    "pre_trained": False,
}
# OpenVINO f32 vs torch: same graph, different kernels; the map is a softmax probability in [0, 1]
# and the post-processor min-max normalises it, so 1e-3 absolute is a tight bound.
PARITY_ATOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core CI machine, more threads oversubscribe it badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rbae_engine")
    data_root = make_fake_mvtec(root / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=SIZE)
    datamodule = MVTecAD(root=data_root, category="toy", train_batch_size=2, eval_batch_size=2, num_workers=0)
    model = RBAE(phase1=Phase1Config(epochs=1), phase2=Phase2Config(epochs=1), **TINY)
    engine = Engine(max_epochs=2, default_root_dir=root / "results", accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=datamodule)
    return {"root": root, "data_root": data_root, "datamodule": datamodule, "model": model, "engine": engine}


def test_fit_runs_both_phases_and_sets_reference(trained: dict) -> None:
    model: RBAE = trained["model"]
    assert trained["engine"].trainer.current_epoch == 2
    assert bool(model.model.ref_ready)
    # A28: reference = first training image by sorted path, resize-only pre-processed
    first = sorted((trained["data_root"] / "toy" / "train" / "good").glob("*.png"))[0]
    expected = model.pre_processor.transform(read_image(first, as_tensor=True).unsqueeze(0))
    assert torch.allclose(model.model.ref_image, expected)
    feats = model.model.encoder.eval()(model.model.ref_image)
    for level in (3, 4, 5):
        assert torch.allclose(getattr(model.model, f"ref_feat_{level}"), feats[level - 1], atol=1e-6)


def test_test_and_predict(trained: dict) -> None:
    engine, model, datamodule = trained["engine"], trained["model"], trained["datamodule"]
    results = engine.test(model=model, datamodule=datamodule)
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= set(results[0])
    predictions = engine.predict(model=model, datamodule=datamodule)
    batch = predictions[0]
    assert batch.anomaly_map.shape[-2:] == (SIZE, SIZE)
    assert batch.pred_score.shape == (2,)


def test_checkpoint_loads_with_weights_only(trained: dict) -> None:
    ckpt = trained["engine"].trainer.checkpoint_callback.best_model_path or str(
        next(Path(trained["root"], "results").rglob("*.ckpt"))
    )
    loaded = RBAE.load_from_checkpoint(ckpt, map_location="cpu")  # anomalib loads with weights_only=True
    # a plain safe load works too, with the ablation groups allow-listed
    with torch.serialization.safe_globals(list(RBAE.checkpoint_safe_globals())):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["network"] == TINY["network"]
    assert "model.ref_feat_5" in state["state_dict"]
    assert bool(loaded.model.ref_ready)
    assert torch.equal(loaded.model.ref_feat_3, trained["model"].model.ref_feat_3)
    x = torch.rand(1, 3, SIZE, SIZE)
    loaded.eval()
    trained["model"].eval()
    assert torch.allclose(loaded.model(x).anomaly_map, trained["model"].model(x).anomaly_map, atol=1e-6)


@pytest.mark.parametrize("export_type", [ExportType.ONNX, ExportType.OPENVINO])
def test_export_and_openvino_inferencer_match_torch(trained: dict, export_type: ExportType) -> None:
    engine, model, root = trained["engine"], trained["model"], trained["root"]
    path = engine.export(
        model=model,
        export_type=export_type,
        export_root=root / f"export_{export_type.value}",
        input_size=(SIZE, SIZE),
        onnx_kwargs={"opset_version": 18},
    )
    assert path is not None
    assert Path(path).exists()
    inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    image_path = sorted((trained["data_root"] / "toy" / "test").rglob("*.png"))[-1]
    image = read_image(image_path, as_tensor=True)
    prediction = inferencer.predict(image)
    model.eval()
    with torch.no_grad():
        reference = model(image.unsqueeze(0))  # pre-processor + network + post-processor, as exported
    np.testing.assert_allclose(
        np.asarray(prediction.anomaly_map).reshape(-1),
        reference.anomaly_map.numpy().reshape(-1),
        atol=PARITY_ATOL,
    )
    np.testing.assert_allclose(
        np.asarray(prediction.pred_score).reshape(-1), reference.pred_score.numpy().reshape(-1), atol=PARITY_ATOL
    )


def test_cli_short_name_fit(trained: dict, tmp_path: Path) -> None:
    """``anomalib fit --model RBAE`` works by short name (registration hook of the package)."""
    exe = Path(sys.executable).parent / "anomalib"
    cmd = [
        str(exe),
        "fit",
        "--model",
        "RBAE",
        "--model.phase1.epochs",
        "1",
        "--model.phase2.epochs",
        "1",
        "--model.pre_processor",
        '{"class_path": "anomalib.pre_processing.PreProcessor", "init_args": {"transform": '
        f'{{"class_path": "torchvision.transforms.v2.Resize", "init_args": {{"size": [{SIZE}, {SIZE}]}}}}}}}}',
        "--model.network.encoder_channels",
        "[8, 8, 8, 8, 8]",
        "--model.network.ffm_mid_channels",
        "8",
        "--model.perceptual_backbone",
        "efficientnet_lite0",
        "--model.perceptual_layers",
        "[0]",
        "--model.pre_trained",
        "false",
        "--data",
        "anomalib.data.MVTecAD",
        "--data.root",
        str(trained["data_root"]),
        "--data.category",
        "toy",
        "--data.train_batch_size",
        "2",
        "--data.eval_batch_size",
        "2",
        "--data.num_workers",
        "0",
        "--trainer.max_epochs",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--default_root_dir",
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.rglob("*.ckpt"))
