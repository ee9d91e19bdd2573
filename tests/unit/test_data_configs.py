"""configs/data/*.yaml load through anomalib's CLI parser and build their datamodules."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from anomalib.cli import AnomalibCLI
from anomalib.data import AnomalibDataModule
from jsonargparse import ArgumentParser

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "data").glob("*.yaml"))


def print_config(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        AnomalibCLI(args=["train", *args, "--model", "Padim", "--print_config"], run=False)
    assert info.value.code in {0, None}
    return yaml.safe_load(out.getvalue())


def test_all_dataset_configs_are_present():
    assert {p.stem for p in CONFIGS} >= {"dagm", "mpdd", "btad", "mvtecad", "visa", "demo_textures", "elpv", "folder"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_through_the_cli(config):
    expected = yaml.safe_load(config.read_text())["data"]
    printed = print_config("--config", str(config))["data"]
    assert printed["class_path"] == expected["class_path"]
    for key, value in expected["init_args"].items():
        if key == "root":
            assert Path(printed["init_args"][key]) == Path(value)
        else:
            assert str(printed["init_args"][key]) == str(value), key


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_instantiates_its_datamodule(config):
    parser = ArgumentParser()
    parser.add_subclass_arguments(AnomalibDataModule, "data")
    datamodule = parser.instantiate_classes(parser.parse_path(str(config))).data
    assert isinstance(datamodule, AnomalibDataModule)
    init_args = yaml.safe_load(config.read_text())["data"]["init_args"]
    if "category" in init_args:
        assert datamodule.category == init_args["category"]
    else:  # Folder: one dataset, named
        assert datamodule.name == init_args["name"]


@pytest.mark.parametrize("name", ["DAGM", "DemoTextures", "BTAD", "ELPV"])
def test_short_names_resolve_on_the_cli(name):
    printed = print_config("--data", name)
    assert printed["data"]["class_path"] == f"anomalib_ext.data.{name}"
