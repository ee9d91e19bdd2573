"""N2N under Lightning DDP with two CPU processes (gloo): trains, and every rank ends with the same state.

N2N builds no state from data (T22); what must agree across ranks is the fixed eval noise (drawn
from a private seeded generator, never the global RNG) and the synced ``val_loss`` that drives
early stopping. Every parameter must receive a gradient in each step (plain ``ddp`` strategy,
``find_unused_parameters=False``), or DDP raises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.datasets import make_fake_mvtec

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

REPO = Path(__file__).resolve().parents[2]


def test_two_process_ddp_training_keeps_ranks_consistent(tmp_path: Path) -> None:
    data_root = make_fake_mvtec(tmp_path / "data", image_size=32, n_train=8, n_test_good=2, n_test_defect=2)
    init_args = {"image_size": [32, 32], "base_channels": 8, "early_stopping_patience": 2}
    command = [
        sys.executable,
        "-m",
        "tests.helpers.ddp_train",
        "--model",
        "anomalib_ext.models.N2N",
        "--init-args",
        json.dumps(init_args),
        "--data-root",
        str(data_root),
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--max-epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=500, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "run"
    assert json.loads((run / "result.json").read_text())["world_size"] == 2
    rank0 = torch.load(run / "buffers_rank0.pt", weights_only=True)
    rank1 = torch.load(run / "buffers_rank1.pt", weights_only=True)
    assert torch.equal(rank0["model.eval_noise"], rank1["model.eval_noise"])
    expected = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    torch.testing.assert_close(rank0["model.eval_noise"], expected)
    checkpoint = torch.load(run / "model.ckpt", weights_only=True)
    assert "model.eval_noise" in checkpoint["state_dict"]
