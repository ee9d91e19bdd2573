"""Every ``configs/model/*.yaml`` parses in anomalib's CLI the way the docs use it, for each subcommand.

A model config that pins a batch size carries a ``data:`` section; it must name its default datamodule
(``class_path``), or ``anomalib export``/``predict --config <model>.yaml`` fail at parse time and a data
config given after it loses the batch size. Checked in process with ``--print_config`` (nothing trains).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from anomalib.cli import AnomalibCLI

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIGS = sorted((ROOT / "configs" / "model").glob("*.yaml"))


def print_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        AnomalibCLI(args=[*args, "--print_config"])
    out = capsys.readouterr().out
    assert exit_info.value.code in {0, None}, out
    return yaml.safe_load(out)


def pinned_batch_size(config: Path) -> int | None:
    data = yaml.safe_load(config.read_text()).get("data") or {}
    return (data.get("init_args") or {}).get("train_batch_size")


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=lambda path: path.stem)
def test_a_data_config_after_the_model_config_keeps_the_pinned_batch_size(config: Path, capsys) -> None:
    printed = print_config(
        capsys, "train", "--config", str(config), "--config", str(ROOT / "configs" / "data" / "elpv.yaml")
    )
    assert printed["data"]["class_path"] == "anomalib_ext.data.ELPV"
    if (batch := pinned_batch_size(config)) is not None:
        assert printed["data"]["init_args"]["train_batch_size"] == batch


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=lambda path: path.stem)
def test_predict_on_a_folder_and_export_take_the_model_config(config: Path, capsys, tmp_path: Path) -> None:
    predicted = print_config(capsys, "predict", "--config", str(config), "--data", str(tmp_path))
    assert predicted["data"] == str(tmp_path)
    exported = print_config(capsys, "export", "--config", str(config), "--export_type", "openvino")
    assert exported["model"]["class_path"].startswith("anomalib_ext.models.")
