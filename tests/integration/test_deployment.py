"""Deployment: PredictionsWriter under Engine.predict/test and ``anomalib predict``, thresholds at deployment
(writer and OpenVINO export), on a tiny PaDiM (random-weight EfficientNet-Lite0, 64 px)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from anomalib.models import Padim

from anomalib_ext.callbacks import PREDICTION_COLUMNS, PredictionsWriter
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

SIZE = 64
PADIM = {"backbone": "efficientnet_lite0", "layers": ["blocks.1", "blocks.2"], "n_features": 16, "pre_trained": False}
ANOMALIB = str(Path(sys.executable).with_name("anomalib"))
# OpenVINO compiled in f32 (the CPU plugin may default to bf16): scores agree with torch to ~1e-6.
OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
SCORE_ATOL = 1e-4


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("deployment")
    root = make_fake_mvtec(tmp / "data", image_size=SIZE, n_train=8, n_test_good=4, n_test_defect=4)
    datamodule = MVTecAD(root=root, category="toy", train_batch_size=4, eval_batch_size=4, num_workers=0)
    torch.manual_seed(0)
    model = Padim(**PADIM, pre_processor=Padim.configure_pre_processor(image_size=(SIZE, SIZE)))
    engine = Engine(max_epochs=1, default_root_dir=tmp / "results", accelerator="cpu", devices=1, logger=False)
    engine.fit(model, datamodule=datamodule)
    checkpoint = Path(engine.trainer.checkpoint_callback.best_model_path)
    assert checkpoint.is_file()
    images = sorted((root / "toy" / "test").rglob("*.png"))
    return {"tmp": tmp, "root": root, "model": model, "checkpoint": checkpoint, "images": images}


def predict(trained: dict, tmp_path: Path, writer: PredictionsWriter, model: Padim | None = None) -> list:
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, callbacks=[writer])
    model = model or trained["model"]
    return engine.predict(model, data_path=trained["root"] / "toy" / "test", ckpt_path=trained["checkpoint"])


def scores_and_labels(predictions: list) -> dict[str, tuple[float, int]]:
    out = {}
    for batch in predictions:
        fields = (batch.image_path, batch.pred_score.reshape(-1), batch.pred_label.reshape(-1))
        for path, score, label in zip(*fields, strict=True):
            out[path] = (float(score), int(label))
    return out


def test_engine_predict_writes_one_row_per_image_with_heat_maps(trained: dict, tmp_path: Path) -> None:
    writer = PredictionsWriter()
    predictions = predict(trained, tmp_path, writer)
    expected = scores_and_labels(predictions)
    assert writer.csv_path is not None
    assert writer.csv_path.name == "predictions.csv"
    rows, records = read_csv(writer.csv_path), read_jsonl(writer.jsonl_path)
    assert list(rows[0]) == list(PREDICTION_COLUMNS)
    assert sorted(row["image_path"] for row in rows) == sorted(str(p) for p in trained["images"])
    assert [row["image_path"] for row in rows] == [record["image_path"] for record in records]
    for row, record in zip(rows, records, strict=True):
        score, label = expected[row["image_path"]]
        assert float(row["score"]) == pytest.approx(score)
        assert record["score"] == pytest.approx(score)
        assert int(row["label"]) == record["label"] == label  # the model's own decision
        assert float(row["threshold"]) == record["threshold"] == 0.5
        assert Path(record["heat_map"]).is_file()
        assert row["heat_map"] == record["heat_map"]
        assert Path(record["heat_map"]).name == Path(row["image_path"]).name
    assert {label for _, label in expected.values()} == {0, 1}  # both decisions occur on this data


def test_a_deployment_threshold_changes_decisions_not_scores(trained: dict, tmp_path: Path) -> None:
    default = predict(trained, tmp_path / "default", PredictionsWriter())
    scores = {path: score for path, (score, _) in scores_and_labels(default).items()}
    anomalous = {}
    for threshold in (0.3, 0.7):
        writer = PredictionsWriter(threshold=threshold)
        predict(trained, tmp_path / str(threshold), writer)
        records = read_jsonl(writer.jsonl_path)
        for record in records:
            assert record["score"] == pytest.approx(scores[record["image_path"]])
            assert record["threshold"] == threshold
            assert record["label"] == int(np.float32(record["score"]) > np.float32(threshold))
        anomalous[threshold] = sum(record["label"] for record in records)
    assert anomalous[0.7] < anomalous[0.3]


def test_without_a_visualizer_the_heat_map_column_is_empty(trained: dict, tmp_path: Path) -> None:
    model = Padim(**PADIM, pre_processor=Padim.configure_pre_processor(image_size=(SIZE, SIZE)), visualizer=False)
    writer = PredictionsWriter(output_dir=tmp_path / "out", file_name="line3")
    predict(trained, tmp_path, writer, model=model)
    assert writer.csv_path == tmp_path / "out" / "line3.csv"
    assert {row["heat_map"] for row in read_csv(writer.csv_path)} == {""}
    assert {record["heat_map"] for record in read_jsonl(writer.jsonl_path)} == {None}


def test_engine_test_adds_the_ground_truth(trained: dict, tmp_path: Path) -> None:
    writer = PredictionsWriter()
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, callbacks=[writer])
    datamodule = MVTecAD(root=trained["root"], category="toy", eval_batch_size=4, num_workers=0)
    engine.test(trained["model"], datamodule=datamodule, ckpt_path=trained["checkpoint"])
    assert writer.csv_path.name == "test_predictions.csv"
    records = read_jsonl(writer.jsonl_path)
    truth = {record["image_path"]: record["gt_label"] for record in records}
    assert truth == {str(p): int(p.parent.name != "good") for p in trained["images"]}


def test_anomalib_predict_switches_the_writer_on_from_a_yaml_config(trained: dict, tmp_path: Path) -> None:
    config = {
        "model": {"class_path": "anomalib.models.Padim", "init_args": PADIM},
        "data": str(trained["root"] / "toy" / "test"),
        "ckpt_path": str(trained["checkpoint"]),
        "default_root_dir": str(tmp_path / "results"),
        "trainer": {
            "accelerator": "cpu",
            "callbacks": [{"class_path": "anomalib_ext.callbacks.PredictionsWriter", "init_args": {"threshold": 0.6}}],
        },
    }
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [ANOMALIB, "predict", "--config", "predict.yaml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    files = sorted((tmp_path / "results").rglob("predictions.csv"))
    assert len(files) == 1, sorted(str(p) for p in (tmp_path / "results").rglob("*"))[:40]
    rows = read_csv(files[0])
    assert sorted(row["image_path"] for row in rows) == sorted(str(p) for p in trained["images"])
    for row in rows:
        assert float(row["threshold"]) == 0.6
        assert int(row["label"]) == int(np.float32(row["score"]) > np.float32(0.6))
        assert Path(row["heat_map"]).is_file()
    assert files[0].with_suffix(".jsonl").is_file()


def test_openvino_export_takes_a_deployment_threshold_on_its_score(trained: dict, tmp_path: Path) -> None:
    """The exported graph holds the trained threshold as constants; its pred_score is the normalised score."""
    model = trained["model"]
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False)
    xml = engine.export(model, ExportType.OPENVINO, export_root=tmp_path / "export", input_size=(SIZE, SIZE))
    writer = PredictionsWriter(threshold=0.3)
    predict(trained, tmp_path / "torch", writer)
    torch_records = {record["image_path"]: record for record in read_jsonl(writer.jsonl_path)}
    inferencer = OpenVINOInferencer(path=xml, device="CPU", config=OV_CONFIG)
    for image in trained["images"]:
        prediction = inferencer.predict(image)
        score = float(prediction.pred_score.reshape(-1)[0])
        assert score == pytest.approx(torch_records[str(image)]["score"], abs=SCORE_ATOL)
        assert bool(prediction.pred_label.reshape(-1)[0]) == (score > 0.5)  # the trained decision
        assert int(score > 0.3) == torch_records[str(image)]["label"]  # the deployment decision


def test_re_export_with_a_sensitivity_moves_the_exported_decision(trained: dict, tmp_path: Path) -> None:
    model = Padim.load_from_checkpoint(trained["checkpoint"], map_location="cpu")
    model.post_processor.image_sensitivity = 1.0 - 0.3  # decision: normalised score above 0.3
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False)
    xml = engine.export(model, ExportType.OPENVINO, export_root=tmp_path / "export", input_size=(SIZE, SIZE))
    inferencer = OpenVINOInferencer(path=xml, device="CPU", config=OV_CONFIG)
    decisions = []
    for image in trained["images"]:
        prediction = inferencer.predict(image)
        score = float(prediction.pred_score.reshape(-1)[0])
        decisions.append(bool(prediction.pred_label.reshape(-1)[0]))
        assert decisions[-1] == (np.float32(score) > np.float32(0.3))
    assert any(decisions)
