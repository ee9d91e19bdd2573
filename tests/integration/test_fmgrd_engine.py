"""FMGRD end to end on a tiny fake MVTec AD: Engine fit/test/predict, ONNX and OpenVINO export with
torch-vs-OpenVINO parity, safe (``weights_only``) checkpoint reload, and the CLI by short name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine

from anomalib_ext.models import FMGRD
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

IMAGE_SIZE = 64
# OpenVINO compiled in f32 (the CPU default is bf16, spec Trap 15); measured differences are ~1e-6.
PARITY_ATOL = 1e-4
TINY = {
    "backbone": "efficientnet_lite0",
    "layers": ["blocks.1", "blocks.2", "blocks.4"],
    "pre_trained": False,
    "sigma": 1,
}


def datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="toy", train_batch_size=4, eval_batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fmgrd_engine")
    root = make_fake_mvtec(tmp / "data", image_size=IMAGE_SIZE)
    torch.manual_seed(0)
    model = FMGRD(**TINY, pre_processor=FMGRD.configure_pre_processor((IMAGE_SIZE, IMAGE_SIZE)))
    engine = Engine(max_epochs=1, default_root_dir=tmp / "results", accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=datamodule(root))
    return tmp, root, model, engine


def test_fit_test_predict_report_the_paper_metrics(trained):
    _, root, model, engine = trained
    metrics = engine.test(model=model, datamodule=datamodule(root))[0]
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert 0.0 <= metrics[key] <= 1.0
    predictions = engine.predict(model=model, datamodule=datamodule(root))
    batch = predictions[0]
    assert batch.anomaly_map.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert batch.pred_score.shape[0] == batch.image.shape[0]
    assert model.generator is None  # dropped after training: nothing random left


def test_checkpoint_reloads_with_weights_only_and_predicts_the_same(trained):
    _, root, model, engine = trained
    checkpoint = Path(
        engine.trainer.checkpoint_callback.best_model_path or engine.trainer.checkpoint_callback.last_model_path
    )
    assert checkpoint.is_file()
    torch.load(checkpoint, map_location="cpu", weights_only=True)  # plain data only, no allow-list needed
    reloaded = FMGRD.load_from_checkpoint(checkpoint, map_location="cpu")  # weights_only=True by default
    image = next(iter(datamodule_setup(root).test_dataloader())).image[:2]
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        expected, got = model(image), reloaded(image)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map)
    torch.testing.assert_close(got.pred_score, expected.pred_score)


def datamodule_setup(root: Path) -> MVTecAD:
    dm = datamodule(root)
    dm.setup()
    return dm


def test_onnx_export_has_no_random_ops(trained):
    tmp, _, model, engine = trained
    path = engine.export(model, ExportType.ONNX, export_root=tmp / "onnx")
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert not any(op.startswith("Random") for op in ops)


def test_openvino_f32_matches_torch_on_the_same_image(trained):
    tmp, root, model, engine = trained
    path = engine.export(model, ExportType.OPENVINO, export_root=tmp / "openvino")
    inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    image = datamodule_setup(root).test_data[-1].image  # a defective image, (3, H, W) in [0, 1]
    model.eval()
    with torch.no_grad():
        expected = model(image[None])
    got = inferencer.predict(image)
    np.testing.assert_allclose(
        np.asarray(got.anomaly_map).reshape(-1), expected.anomaly_map.numpy().reshape(-1), atol=PARITY_ATOL
    )
    np.testing.assert_allclose(
        np.asarray(got.pred_score).reshape(-1), expected.pred_score.numpy().reshape(-1), atol=PARITY_ATOL
    )


def test_cli_trains_by_short_name(tmp_path):
    root = make_fake_mvtec(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=IMAGE_SIZE)
    pre_processor = (
        '{"class_path": "anomalib.pre_processing.PreProcessor", "init_args": {"transform": '
        '{"class_path": "torchvision.transforms.v2.Resize", "init_args": {"size": [64, 64]}}}}'
    )
    anomalib = Path(sys.executable).with_name("anomalib")
    command = [
        str(anomalib), "fit", "--model", "FMGRD",
        "--model.backbone", "efficientnet_lite0", "--model.layers", "[blocks.1, blocks.2, blocks.4]",
        "--model.pre_trained", "false", "--model.pre_processor", pre_processor,
        "--data", "anomalib.data.MVTecAD", "--data.root", str(root), "--data.category", "toy",
        "--data.num_workers", "0", "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--default_root_dir", str(tmp_path / "results"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "results").rglob("*.ckpt"))
