"""SMCC's YAML configs: keys equal the constructor arguments, paper and offline defaults, CLI parsing."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from anomalib_ext.models import SMCC

COMPONENTS = {"self", "pre_processor", "post_processor", "evaluator", "visualizer"}


def load(project_root: Path, name: str) -> dict:
    return yaml.safe_load((project_root / "configs" / "model" / name).read_text())


@pytest.mark.parametrize("name", ["smcc.yaml", "smcc_cpu.yaml"])
def test_config_keys_are_the_constructor_arguments(project_root: Path, name: str) -> None:
    config = load(project_root, name)
    assert config["model"]["class_path"] == "anomalib_ext.models.SMCC"
    assert set(config["model"]["init_args"]) == set(inspect.signature(SMCC.__init__).parameters) - COMPONENTS
    assert "max_epochs" in config["trainer"]


def test_paper_config_uses_the_paper_backbone_and_defaults(project_root: Path) -> None:
    args = load(project_root, "smcc.yaml")["model"]["init_args"]
    defaults = {k: p.default for k, p in inspect.signature(SMCC.__init__).parameters.items() if k not in COMPONENTS}
    assert args["backbone"] == "wide_resnet50_2.tv_in1k"
    assert args["image_size"] == [224, 224]
    for key, value in args.items():
        if key not in {"image_size", "layers"}:
            assert value == defaults[key], key
    assert args["layers"] == list(defaults["layers"])


def test_offline_config_uses_efficientnet_lite0(project_root: Path) -> None:
    config = load(project_root, "smcc_cpu.yaml")
    assert config["model"]["init_args"]["backbone"] == "efficientnet_lite0"
    assert config["model"]["init_args"]["layers"] == ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert config["model"]["init_args"]["fusion_layer_index"] == 1


def test_offline_config_builds_the_model(project_root: Path) -> None:
    args = load(project_root, "smcc_cpu.yaml")["model"]["init_args"] | {"pre_trained": False}
    model = SMCC(**args)
    assert model.input_size == tuple(args["image_size"])
    assert model.model.fusion.out_channels == 496
