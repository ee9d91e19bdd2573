"""One benchmark job's building blocks: the model built as the CLI builds it, validation, coreset bound."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from anomalib_ext.models.defaults import default_evaluator
from anomalib_ext.post_processing import OrderPreservingPostProcessor
from benchmarks.profiles import CONFIG_DIR, PROFILES, read_model_config, resolve_model
from benchmarks.worker import (
    CoresetPatchLimit,
    apply_int8_types,
    build_datamodule,
    build_model,
    calibration_datamodule,
    model_arguments,
    trainer_arguments,
    validation_reason,
)


def _job(name: str, image_size: int | None = 64) -> dict:
    spec = resolve_model(name, PROFILES["cpu"])
    return {
        "model": {
            "class_path": spec.class_path,
            "init_args": spec.init_args,
            "ours": spec.ours,
            "trainer_args": spec.trainer_args,
        },
        "image_size": image_size,
        "offline_backbones": True,
        "max_epochs": spec.max_epochs,
        "max_steps": spec.max_steps,
    }


def test_a_model_section_parses_as_the_cli_reads_it():
    cls, arguments = model_arguments({"class_path": "Padim", "init_args": {"n_features": 10}})
    assert cls.__name__ == "Padim"
    assert arguments["n_features"] == 10
    assert arguments["backbone"] == "resnet18"  # the class's default filled in, as the CLI does
    with pytest.raises(ValueError, match=r"(?s)'Padim' does not parse.*n_featurez"):
        model_arguments({"class_path": "Padim", "init_args": {"n_featurez": 10}})


def test_builtins_get_the_shared_evaluator_order_preserving_post_processor_and_profile_size():
    model = build_model(_job("Padim"))
    assert isinstance(model.post_processor, OrderPreservingPostProcessor)
    names = [metric.name for metric in model.evaluator.test_metrics]
    assert names == [metric.name for metric in default_evaluator().test_metrics]
    assert model.visualizer is None
    assert list(model.pre_processor.transform.transforms[0].size) == [64, 64]
    assert validation_reason(model, {}) is None


CPU_CONFIGS = sorted(CONFIG_DIR.glob("*_cpu.yaml"))


@pytest.mark.parametrize("config", CPU_CONFIGS, ids=[path.stem for path in CPU_CONFIGS])
def test_every_cpu_config_parses_as_the_cli_reads_it(config: Path):
    section, _, _ = read_model_config(config)
    cls, _ = model_arguments(section)
    assert cls.__name__.lower() == config.stem.removesuffix("_cpu")


def test_our_model_is_built_from_its_config_with_the_harness_components():
    job = _job("mldfr")
    model = build_model(job)
    assert type(model).__name__ == "MLDFR"
    assert isinstance(model.post_processor, OrderPreservingPostProcessor)
    assert [m.name for m in model.evaluator.test_metrics] == [m.name for m in default_evaluator().test_metrics]
    arguments = trainer_arguments(job, Path("/tmp/x"))
    assert {k: arguments.get(k) for k in ("max_epochs", "max_steps")} == {
        "max_epochs": job["max_epochs"],
        "max_steps": job["max_steps"],
    }


class _Monitoring:
    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def configure_callbacks(self):
        return [EarlyStopping(monitor=self.monitor)]


def test_validation_runs_only_for_a_model_that_monitors_a_validation_quantity():
    assert validation_reason(_Monitoring("val_loss"), {}) == "EarlyStopping monitors 'val_loss'"
    assert validation_reason(_Monitoring("train_loss_epoch"), {}) is None
    config_callback = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "x"}}
    assert validation_reason(SimpleNamespace(), {"callbacks": [config_callback]}) == "ModelCheckpoint monitors 'x'"


def test_coreset_patch_limit_subsamples_the_stored_patches_with_the_seed():
    store = [torch.arange(400.0).reshape(100, 4), torch.arange(400.0, 600.0).reshape(50, 4)]
    pl_module = SimpleNamespace(model=SimpleNamespace(embedding_store=store))
    limit = CoresetPatchLimit(max_patches=60, seed=0)
    limit.on_train_epoch_end(None, pl_module)
    assert limit.patches_before == 150
    assert len(store) == 1
    assert store[0].shape == (60, 4)
    rows = {tuple(row.tolist()) for row in store[0]}
    assert rows <= {tuple(row.tolist()) for row in torch.arange(600.0).reshape(150, 4)}
    again = [torch.arange(400.0).reshape(100, 4), torch.arange(400.0, 600.0).reshape(50, 4)]
    CoresetPatchLimit(60, seed=0).on_train_epoch_end(
        None, SimpleNamespace(model=SimpleNamespace(embedding_store=again))
    )
    assert torch.equal(again[0], store[0])
    small = [torch.zeros(10, 4)]
    CoresetPatchLimit(60, seed=0).on_train_epoch_end(
        None, SimpleNamespace(model=SimpleNamespace(embedding_store=small))
    )
    assert small[0].shape == (10, 4)


def test_int8_calibration_reads_training_images_not_the_test_set():
    datamodule = SimpleNamespace(train_data="train", val_data="test", test_data="test")
    calibration = calibration_datamodule(datamodule)
    assert calibration.val_data == "train"
    assert datamodule.val_data == "test"


def test_int8_types_of_the_job_replace_what_the_model_class_quantises():
    from anomalib_ext.models import SMCC

    class Ours(SMCC):  # a throwaway subclass: the worker sets the class attribute the quantiser reads
        pass

    class Anomalibs:  # anomalib's models have no int8_quantised_types
        pass

    record: dict = {}
    apply_int8_types(Ours.__new__(Ours), {"int8_types": ["Convolution", "GroupConvolution"]}, record)
    assert Ours.int8_quantised_types == ("Convolution", "GroupConvolution")
    assert record["int8_quantised_types"] == "Convolution+GroupConvolution"
    assert SMCC.int8_quantised_types == ("Convolution", "GroupConvolution", "MatMul")  # the real class untouched
    apply_int8_types(Ours.__new__(Ours), {"int8_types": None}, record)
    assert Ours.int8_quantised_types is None
    assert record["int8_quantised_types"] == "all"
    record = {}
    apply_int8_types(SMCC.__new__(SMCC), {}, record)  # not named: the model's own choice, recorded
    assert record["int8_quantised_types"] == "Convolution+GroupConvolution+MatMul"
    record = {}
    apply_int8_types(Anomalibs(), {}, record)
    assert record == {}


def test_validation_when_needed_holds_out_training_images_never_test_images(tmp_path: Path):
    from tests.helpers.datasets import make_fake_mvtec

    root = make_fake_mvtec(tmp_path, n_train=10, image_size=16)
    job = {
        "data": {
            "class_path": "anomalib.data.MVTecAD",
            "init_args": {"root": str(root), "category": "toy", "num_workers": 0},
        },
        "max_train_images": None,
    }
    plain = build_datamodule(job, seed=0)
    assert plain.val_split_mode.value == "same_as_test"
    held_out = build_datamodule(job, seed=0, validation=True)
    assert held_out.val_split_mode.value == "from_train"
    val_paths = set(held_out.val_data.samples["image_path"])
    assert len(val_paths) == 2  # 20% of the 10 training images
    assert not val_paths & set(held_out.test_data.samples["image_path"])
    assert not val_paths & set(held_out.train_data.samples["image_path"])
    job["data"]["init_args"]["val_split_ratio"] = 0.5  # a model's config may set its own split
    assert len(build_datamodule(job, seed=0, validation=True).val_data) == 5
