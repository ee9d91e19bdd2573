"""SMCC's YAML configs and ablation groups: only non-default values, paper and offline settings, CLI parsing."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from anomalib_ext.models import SMCC
from anomalib_ext.models.smcc.config import FeatureConfig

DEFAULTS = {key: parameter.default for key, parameter in inspect.signature(SMCC).parameters.items()}


def load(project_root: Path, name: str) -> dict:
    return yaml.safe_load((project_root / "configs" / "model" / name).read_text())


def parse(init_args: dict) -> dict:
    """``init_args`` as anomalib's CLI and the benchmark worker read them (jsonargparse), groups instantiated."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SMCC, "model", instantiate=False, fail_untyped=False)
    return dict(vars(parser.instantiate_classes(parser.parse_object({"model": init_args})).model))


@pytest.mark.parametrize("name", ["smcc.yaml", "smcc_cpu.yaml"])
def test_configs_list_only_what_differs_from_the_defaults(project_root: Path, name: str) -> None:
    config = load(project_root, name)
    assert config["model"]["class_path"] == "anomalib_ext.models.SMCC"
    for key, value in (config["model"].get("init_args") or {}).items():
        default = DEFAULTS[key]
        if dataclasses.is_dataclass(default):
            for field, field_value in value.items():
                assert getattr(default, field) != field_value, f"{name}: {key}.{field} repeats its default"
        else:
            assert default != value, f"{name}: {key} repeats its default"
            if isinstance(default, (list, tuple)):
                assert list(default) != value, f"{name}: {key} repeats its default"
    assert config["trainer"]["max_epochs"] > 0
    parse(config["model"].get("init_args") or {})  # the CLI accepts it


def test_paper_config_is_the_defaults(project_root: Path) -> None:
    assert "init_args" not in load(project_root, "smcc.yaml")["model"]
    assert DEFAULTS["backbone"] == "wide_resnet50_2.tv_in1k"
    assert tuple(DEFAULTS["layers"]) == ("layer1", "layer2", "layer3", "layer4")
    assert tuple(DEFAULTS["image_size"]) == (224, 224)
    assert (DEFAULTS["n_components"], DEFAULTS["memory_bank_images"], DEFAULTS["lr"]) == (10, 16, 1e-3)
    assert DEFAULTS["clustering"].sampling_rate == 0.1
    assert DEFAULTS["training"].weight_decay == 5e-4
    assert DEFAULTS["features"].fusion_layer_index == 0


def test_offline_config_uses_efficientnet_lite0(project_root: Path) -> None:
    config = load(project_root, "smcc_cpu.yaml")
    args = config["model"]["init_args"]
    assert args["backbone"] == "efficientnet_lite0"
    assert args["layers"] == ["blocks.2", "blocks.4"]
    assert args["features"] == {"aggregation_kernel": 3}
    assert args["scoring"] == {"coreset_ratio": 0.05}  # PatchCore's bank selection (README, "Coreset")
    assert args["image_size"] == [256, 256]
    assert args["memory_bank_images"] == 64  # four batches: the bank spans batches
    assert args["lr"] == 1e-4  # a float (PyYAML reads 1e-4 without a dot as a string)
    assert config["data"]["init_args"]["train_batch_size"] == 16  # the paper's batch
    # 3 epochs, at most 50 self-update steps: the 250-image runs (48 steps) keep their schedule, 800 images get 50
    assert (config["trainer"]["max_epochs"], config["trainer"]["max_steps"]) == (3, 50)


def test_offline_config_builds_the_model(project_root: Path) -> None:
    args = load(project_root, "smcc_cpu.yaml")["model"]["init_args"] | {"pre_trained": False}
    parsed = parse(args)
    assert parsed["features"] == FeatureConfig(aggregation_kernel=3)
    model = SMCC(**parsed)
    assert model.model.coreset_ratio == 0.05
    assert model.input_size == tuple(args["image_size"])
    assert model.model.fusion.out_channels == 40 + 112
    assert model.model.fusion.target_index == 0


@pytest.mark.parametrize(
    ("init_args", "field"),
    [
        ({"clustering": {"center_source": "means"}}, "center_source"),
        ({"training": {"optimizer": "sgd"}}, "optimizer"),
        ({"scoring": {"image_score": "mean"}}, "image_score"),
        ({"features": {"fusion_upsample_mode": "linear"}}, "fusion_upsample_mode"),
    ],
)
def test_a_bad_choice_fails_at_parse_time_naming_the_choices(init_args: dict, field: str) -> None:
    with pytest.raises(Exception, match=field) as error:
        parse(init_args)
    choices = {
        "center_source": "gmm_means",
        "optimizer": "adamw",
        "image_score": "max_patch",
        "fusion_upsample_mode": "bilinear",
    }
    assert choices[field] in str(error.value)
