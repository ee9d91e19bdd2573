"""Tests of registration: short names in anomalib's CLI and ``get_model``, and a light start-up hook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anomalib.data
import pytest
from anomalib.data import get_datamodule
from anomalib.models import get_model
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from jsonargparse import ArgumentParser

import anomalib_ext
from anomalib_ext.registry import register_datamodules, register_model_names, registered_datamodules, registered_models

EXPECTED_MODELS = {"FMGRD", "MLDFR", "N2N", "RBAE", "SMCC"}
EXPECTED_DATAMODULES = {"BTAD", "DAGM", "DemoTextures", "ELPV"}


def _light_args(name: str) -> dict[str, bool]:
    """Constructor arguments that skip loading pretrained weights (N2N has none to load)."""
    return {} if name == "N2N" else {"pre_trained": False}


ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    return result.stdout.strip()


def test_plain_interpreter_imports_neither_torch_nor_the_plugin() -> None:
    loaded = _python("import sys; print(sorted(m for m in ('torch', 'anomalib', 'anomalib_ext') if m in sys.modules))")
    assert loaded == "[]"
    assert _python("import sys; print('_anomalib_ext_autoload' in sys.modules)") == "True"


def test_importing_anomalib_cli_imports_the_plugin() -> None:
    assert _python("import anomalib.cli, sys; print('anomalib_ext' in sys.modules)") == "True"


def test_every_model_and_datamodule_is_registered() -> None:
    assert set(registered_models()) == EXPECTED_MODELS
    assert set(registered_datamodules()) >= EXPECTED_DATAMODULES


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_models_are_direct_anomalib_module_subclasses(name: str) -> None:
    assert AnomalibModule in registered_models()[name].__bases__


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_get_model_finds_the_model_by_lower_case_name(name: str) -> None:
    cls = registered_models()[name]
    assert type(get_model(name.lower(), **_light_args(name))) is cls


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_get_model_accepts_the_full_class_path(name: str) -> None:
    model = get_model({"class_path": f"anomalib_ext.models.{name}", "init_args": _light_args(name)})
    assert type(model).__name__ == name


def test_register_is_idempotent() -> None:
    anomalib_ext.register()
    anomalib_ext.register()
    assert "anomalib_ext.models" in __import__("anomalib.models").models.ALLOWED_MODULES


@pytest.mark.parametrize(
    ("name", "model"),
    [(name, name) for name in sorted(EXPECTED_MODELS)] + [("MLDFR", "anomalib_ext.models.MLDFR")],
)
def test_cli_resolves_the_model_by_short_and_full_name(name: str, model: str, tmp_path: Path) -> None:
    command = [
        ANOMALIB,
        "fit",
        "--model",
        model,
        "--data",
        "DemoTextures",
        "--data.root",
        str(tmp_path),
        "--print_config",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"class_path: anomalib_ext.models.{name}" in result.stdout
    assert "class_path: anomalib_ext.data.DemoTextures" in result.stdout


COMPONENTS = ("pre_processor", "post_processor", "evaluator", "visualizer")


def _model_parser(name: str) -> ArgumentParser:
    """The model's arguments as anomalib's CLI parses them (jsonargparse, the class signature)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(registered_models()[name], "model")
    return parser


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_cli_shows_at_most_15_arguments_with_anomalibs_four_components(name: str) -> None:
    # issue 17: a dozen knobs plus anomalib's four components, which reach AnomalibModule through
    # ``**components`` and keep its types and ``default: True`` in ``--help``
    parser = _model_parser(name)
    defaults = vars(parser.get_defaults().model)
    assert len(defaults) <= 15, sorted(defaults)
    assert {key: defaults[key] for key in COMPONENTS} == dict.fromkeys(COMPONENTS, True)
    help_text = parser.format_help()
    for key in COMPONENTS:
        entry = help_text.rsplit(f"--model.{key} ", 1)[1].split("--model.", 1)[0]  # the option, not the usage
        entry = " ".join(entry.split())
        assert "default: True" in entry, f"{name}: --model.{key} shows no default"
        type_text = entry.split("(type: ", 1)[1].split(", default", 1)[0]
        assert "Any" not in type_text, f"{name}: --model.{key} lost anomalib's type: {type_text}"


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_a_component_given_on_the_command_line_reaches_the_model(name: str) -> None:
    parser = _model_parser(name)
    light = [f"--model.{key}={value}" for key, value in _light_args(name).items()]
    resize = {"class_path": "torchvision.transforms.v2.Resize", "init_args": {"size": [128, 128]}}
    pre_processor = {"class_path": "anomalib.pre_processing.PreProcessor", "init_args": {"transform": resize}}
    arguments = [*light, "--model.visualizer=false", "--model.evaluator=false"]
    config = parser.parse_args([*arguments, f"--model.pre_processor={json.dumps(pre_processor)}"])
    model = parser.instantiate_classes(config).model
    assert model.visualizer is None
    assert model.evaluator is None
    assert isinstance(model.pre_processor, PreProcessor)
    assert list(model.pre_processor.transform.size) == [128, 128]
    assert "visualizer" not in model.hparams


# Minimal constructor arguments of each datamodule (nothing is read until setup).
DATAMODULE_ARGS = {
    "BTAD": {"root": "./datasets/BTech", "category": "01"},
    "DAGM": {"root": "./datasets/DAGM", "category": "Class3"},
    "DemoTextures": {"root": "./datasets/demo_textures", "category": "grass"},
    "ELPV": {"category": "poly"},
}


def test_every_datamodule_has_constructor_arguments_here() -> None:
    assert set(DATAMODULE_ARGS) == set(registered_datamodules())


@pytest.mark.parametrize("name", sorted(EXPECTED_DATAMODULES))
@pytest.mark.parametrize("form", ["short", "package", "module"])
def test_get_datamodule_resolves_short_names_and_class_paths(name: str, form: str) -> None:
    cls = registered_datamodules()[name]
    class_path = {"short": name, "package": f"anomalib_ext.data.{name}", "module": f"{cls.__module__}.{name}"}[form]
    datamodule = get_datamodule({"data": {"class_path": class_path, "init_args": DATAMODULE_ARGS[name]}})
    assert type(datamodule) is cls
    assert datamodule.category == DATAMODULE_ARGS[name]["category"]


def test_get_datamodule_works_after_the_cli_start_up_hook_alone() -> None:
    code = (
        "import anomalib.cli\n"  # the .pth hook imports anomalib_ext here, nothing else does
        "from anomalib.data import get_datamodule\n"
        "dm = get_datamodule({'class_path': 'anomalib_ext.data.DAGM', 'init_args': {'category': 'Class2'}})\n"
        "print(type(dm).__module__, dm.category)"
    )
    assert _python(code) == "anomalib_ext.data.dagm Class2"


def test_anomalib_datamodules_keep_their_names() -> None:
    from anomalib.data.datamodules.image.mvtecad import MVTecAD

    assert anomalib.data.MVTecAD is MVTecAD
    assert type(get_datamodule({"class_path": "MVTecAD", "init_args": {"category": "bottle"}})) is MVTecAD


def test_a_name_anomalib_already_uses_is_left_to_anomalib_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    class AnomalibsOwnDAGM:  # stands for a DAGM datamodule a later anomalib might ship
        pass

    monkeypatch.setattr(anomalib.data, "DAGM", AnomalibsOwnDAGM)
    with pytest.warns(RuntimeWarning, match=r"anomalib.data already defines DAGM .*DAGM is not added"):
        added = register_datamodules()
    assert "DAGM" not in added
    assert anomalib.data.DAGM is AnomalibsOwnDAGM
    assert {"BTAD", "DemoTextures", "ELPV"} <= set(added)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_get_model_resolves_the_bare_class_name_as_pipeline_configs_write_it(name: str) -> None:
    model = get_model({"class_path": name, "init_args": _light_args(name)})
    assert type(model) is registered_models()[name]


def test_a_model_name_anomalib_already_uses_is_left_to_anomalib(monkeypatch: pytest.MonkeyPatch) -> None:
    import anomalib.models

    class AnomalibsOwnSMCC:
        pass

    monkeypatch.setattr(anomalib.models, "SMCC", AnomalibsOwnSMCC)
    with pytest.warns(RuntimeWarning, match="anomalib.models already defines SMCC"):
        added = register_model_names()
    assert "SMCC" not in added
    assert anomalib.models.SMCC is AnomalibsOwnSMCC
