"""anomalib's own pipelines find the package's models and datamodules: ``anomalib benchmark`` end to end."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.datasets import make_fake_dagm

pytestmark = pytest.mark.slow

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))

# SMCC is the cheapest of the five to train here: a random-weight Lite0 (no weights to load), 32 px.
BENCHMARK = {
    "accelerator": "cpu",
    "benchmark": {
        "seed": 0,
        "model": {
            "class_path": "SMCC",  # the bare name, as anomalib's benchmark configs write "Padim"
            "init_args": {
                "backbone": "efficientnet_lite0",
                "layers": ["blocks.1", "blocks.2"],
                "pre_trained": False,
                "image_size": [32, 32],
                "n_components": 2,
                "memory_bank_images": 4,
            },
        },
        "data": {
            # both spellings anomalib.data.get_datamodule must resolve: short name and class path
            "class_path": {"grid": ["DAGM", "anomalib_ext.data.DAGM"]},
            "init_args": {
                "root": "data",
                "category": "Class1",
                "train_batch_size": 4,
                "eval_batch_size": 4,
                "num_workers": 0,
            },
        },
    },
}


def test_anomalib_benchmark_runs_a_grid_over_our_model_and_datamodule(tmp_path: Path) -> None:
    make_fake_dagm(tmp_path / "data", n_train_good=4, n_train_defect=1, n_test_good=2, n_test_defect=2, image_size=32)
    config = tmp_path / "benchmark.yaml"
    config.write_text(yaml.safe_dump(BENCHMARK))
    # The benchmark job builds Engine() without max_epochs (Lightning's default is 1000 epochs for a
    # model that does not set its own); Lightning reads trainer defaults from PL_TRAINER_* variables.
    env = {**os.environ, "PL_TRAINER_MAX_EPOCHS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [ANOMALIB, "benchmark", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    output = result.stdout + result.stderr
    log = (tmp_path / "runs" / "pipeline.log").read_text()
    # anomalib's pipeline exits 0 even when every job failed: read its log and its CSV.
    assert result.returncode == 0, output[-3000:]
    assert "There were some errors" not in output, log[-3000:]
    results = sorted((tmp_path / "runs" / "benchmark").glob("*/results.csv"))
    assert len(results) == 1, log[-3000:]
    with results[0].open() as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["data.class_path"] for row in rows) == ["DAGM", "anomalib_ext.data.DAGM"]
    for row in rows:
        assert row["model.class_path"] == "SMCC"
        assert 0.0 <= float(row["image_AUROC"]) <= 1.0
        assert 0.0 <= float(row["pixel_AUROC"]) <= 1.0
