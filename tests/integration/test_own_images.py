"""Every model of the package trains and tests on a user's own images through anomalib's ``Folder``.

The datamodule is configs/data/folder.yaml (only root and loader sizes changed), on a layout written
by the test with several defect folders, with masks and without. docs/own_images.md is the page.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from anomalib.data import Folder
from anomalib.engine import Engine

from tests.helpers.datasets import make_fake_folder
from tests.helpers.sweep import sweep
from tests.helpers.tiny import TINY, build

pytestmark = pytest.mark.slow

SIZE = 64
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "data" / "folder.yaml"
ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_folder(tmp_path_factory.mktemp("own") / "my_parts", image_size=SIZE, n_train=8, n_per_defect=2)


def folder(root: Path, masks: bool) -> Folder:
    """configs/data/folder.yaml with ``root`` and test-sized loaders; without ``mask_dir`` for labels only."""
    init_args = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    init_args.update(root=root, train_batch_size=4, eval_batch_size=4, num_workers=0)
    if not masks:
        del init_args["mask_dir"]
    return Folder(**init_args)


@pytest.mark.parametrize("masks", [True, False], ids=["masks", "labels_only"])
@pytest.mark.parametrize("name", sweep(sorted(TINY), default="FMGRD"))
def test_model_trains_and_tests_on_own_images(name: str, masks: bool, parts: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(name)
    datamodule = folder(parts, masks)
    engine = Engine(
        max_epochs=TINY[name]["max_epochs"],
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=False,
    )
    engine.fit(model, datamodule=datamodule)
    metrics = engine.test(model, datamodule=datamodule)[0]
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    pixel = {key for key in metrics if key.startswith("pixel_")}
    if masks:
        assert 0.0 <= metrics["pixel_AUROC"] <= 1.0
    else:
        assert not pixel  # no masks: pixel metrics skipped, not computed on empty masks


def test_cli_command_of_the_page_trains_on_own_images(parts: Path, tmp_path: Path) -> None:
    """The page's command, with a tiny model instead of a *_cpu.yaml config (same data config)."""
    command = [
        ANOMALIB,
        "train",
        "--model",
        "SMCC",
        "--model.backbone",
        "efficientnet_lite0",
        "--model.layers",
        "[blocks.1, blocks.2]",
        "--model.pre_trained",
        "false",
        "--model.image_size",
        f"[{SIZE}, {SIZE}]",
        "--model.memory_bank_images",
        "4",
        "--config",
        str(CONFIG),
        "--data.root",
        str(parts),
        "--data.num_workers",
        "0",
        "--data.train_batch_size",
        "4",
        "--trainer.max_epochs",
        "1",
        "--default_root_dir",
        str(tmp_path / "results"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "image_AUROC" in output
    assert "pixel_AUROC" in output
    heat_maps = list((tmp_path / "results").rglob("images/**/*.png"))
    assert heat_maps, "the visualizer wrote no heat map"
