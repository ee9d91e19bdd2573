"""Tests of the MLDFR Lightning module: configs, optimiser, schedule, one training step, seeding."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import Callback, Trainer
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_ext.models.mldfr import MLDFR
from anomalib_ext.models.mldfr.config import (
    AnomalyMapConfig,
    DamageConfig,
    FeatureConfig,
    RestorerConfig,
    TrainingConfig,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def _tiny_model(**kwargs: object) -> MLDFR:
    defaults = {
        "cnn_backbone": "efficientnet_lite0",
        "cnn_layers": [1, 2, 3],
        "vit_backbone": None,
        "features": FeatureConfig(deep_branch=True),
        "restorer": RestorerConfig(num_blocks=1),
        "sigma": 2.0,
        "pre_trained": False,
        "pre_processor": MLDFR.configure_pre_processor((64, 64)),
        "evaluator": False,
        "visualizer": False,
    }
    defaults.update(kwargs)
    return MLDFR(**defaults)


def _defaults() -> dict[str, object]:
    return {
        key: parameter.default
        for key, parameter in inspect.signature(MLDFR.__init__).parameters.items()
        if key != "self"
    }


def test_constructor_has_the_paper_defaults() -> None:
    # issue 17: the knobs a user tunes stay flat, the ablations live in the typed groups (the size of the
    # surface, with anomalib's components: tests/unit/test_registry.py)
    defaults = _defaults()
    assert defaults["cnn_backbone"] == "resnet18.tv_in1k"
    assert tuple(defaults["cnn_layers"]) == ("layer1", "layer2", "layer3")
    assert defaults["vit_backbone"] == "cait_xs24_384.fb_dist_in1k"
    assert defaults["lr"] == 1e-3
    assert defaults["sigma"] == 8.0
    assert defaults["restorer"].num_blocks == 8
    assert (defaults["features"].vit_input_block, defaults["features"].vit_target_block) == (5, 15)
    assert (defaults["damage"].num_squares, defaults["damage"].side_fraction) == (180, 1 / 24)
    assert defaults["damage"].modes == ("blur", "mask", "white")
    training = defaults["training"]
    assert (training.loss_lambda, training.lr_step_size, training.lr_gamma) == (140.0, 30, 0.8)
    assert defaults["anomaly_map"].score_mode == "max"


@pytest.mark.parametrize("name", ["mldfr.yaml", "mldfr_cpu.yaml"])
def test_configs_list_only_what_differs_from_the_defaults(name: str) -> None:
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["class_path"] == "anomalib_ext.models.MLDFR"
    defaults = _defaults()
    for key, value in config["model"]["init_args"].items():
        if key == "pre_processor":  # one of anomalib's components (``**components``), not in the signature
            continue
        default = defaults[key]
        if dataclasses.is_dataclass(default):
            for field, field_value in value.items():
                assert getattr(default, field) != field_value, f"{name}: {key}.{field} repeats its default"
        else:
            repeated = list(default) == value if isinstance(default, (tuple, list)) else default == value
            assert not repeated, f"{name}: {key} repeats its default"
    assert config["trainer"]["max_epochs"] > 0


def test_paper_config_sets_only_the_paper_input_size() -> None:
    init_args = yaml.safe_load((CONFIGS / "mldfr.yaml").read_text())["model"]["init_args"]
    assert set(init_args) == {"pre_processor"}
    assert init_args["pre_processor"]["init_args"]["transform"]["init_args"]["size"] == [384, 384]


def test_cpu_config_keeps_the_benchmarked_settings() -> None:
    # the benchmarked values (docs/benchmarks.md; the deep pair blocks.5.0 -> blocks.6.0 since 2026-12-06)
    config = yaml.safe_load((CONFIGS / "mldfr_cpu.yaml").read_text())
    init_args = config["model"]["init_args"]
    assert init_args["cnn_backbone"] == "efficientnet_lite0"
    assert init_args["cnn_layers"] == [1, 2, 3]
    assert init_args["vit_backbone"] is None
    assert init_args["sigma"] == pytest.approx(8 * 256 / 384)  # gaussian_sigma
    assert init_args["features"] == {"feature_norm": "layernorm", "deep_branch": True}
    assert init_args["restorer"] == {"num_blocks": 4}
    assert init_args["training"] == {"lr_step_size": 1, "min_steps": 100}  # 100: a held-out demo build (README)
    assert init_args["pre_processor"]["init_args"]["transform"]["init_args"]["size"] == [256, 256]
    assert config["data"]["init_args"]["train_batch_size"] == 15
    assert config["trainer"]["max_epochs"] == 6
    model = MLDFR(
        **{key: value for key, value in init_args.items() if key != "pre_processor"},
        pre_trained=False,
        pre_processor=MLDFR.configure_pre_processor((64, 64)),
        evaluator=False,
        visualizer=False,
    )
    # the pair blocks.5.0 (input side) -> blocks.6.0 (target side) stands in for CaiT's blocks 5 -> 15
    assert len(model.model.feature_extractor.deep_stage) == 5
    assert model.model.feature_extractor.deep_input_blocks == 1
    assert model.model.feature_extractor.num_channels == 24 + 40 + 112 + 192
    assert model.model.feature_extractor.target_channels == 24 + 40 + 112 + 320
    assert len(model.model.restorer.blocks) == 4
    assert model.model.feature_norm == "layernorm"
    assert model.configure_optimizers()["lr_scheduler"]["scheduler"].step_size == 1


def test_groups_accept_plain_mappings_and_name_unknown_fields() -> None:
    model = _tiny_model(restorer={"num_blocks": 2}, damage={"num_squares": 7})
    assert len(model.model.restorer.blocks) == 2
    assert model.damage.num_squares == (7, 7)
    with pytest.raises(TypeError, match=r"RestorerConfig has no field blocks: accepted fields are \['num_blocks'"):
        _tiny_model(restorer={"blocks": 2})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FeatureConfig(cnn_pool="min"), r"FeatureConfig.cnn_pool='min' is invalid: .*\('max', 'avg'\)"),
        (lambda: RestorerConfig(attention_type="cait"), r"attention_type='cait' is invalid: .*'talking_heads'"),
        (lambda: DamageConfig(modes=("blur", "fog")), r"DamageConfig.modes=\('blur', 'fog'\) is invalid"),
        (lambda: TrainingConfig(channel_reduction="max"), r"channel_reduction='max' is invalid: .*\('mean', 'sum'\)"),
        (lambda: AnomalyMapConfig(score_mode="median"), r"score_mode='median' is invalid: .*'topk'"),
    ],
)
def test_a_bad_choice_in_python_names_the_value_and_the_accepted_values(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_a_bad_choice_fails_at_parse_time_naming_the_accepted_values() -> None:
    code = (
        "from jsonargparse import ArgumentParser\n"
        "from anomalib_ext.models import MLDFR\n"
        "parser = ArgumentParser(exit_on_error=False)\n"
        "parser.add_class_arguments(MLDFR, 'model')\n"
        "parser.parse_args(['--model.anomaly_map.score_mode', 'median'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "median" in result.stderr
    assert "topk" in result.stderr


def test_checkpoint_safe_globals_cover_the_saved_hyperparameters() -> None:
    model = _tiny_model(anomaly_map=AnomalyMapConfig(score_mode="topk"))
    safe = set(MLDFR.checkpoint_safe_globals())
    groups = [value for value in model.hparams.values() if dataclasses.is_dataclass(value)]
    assert len(groups) == 5
    assert all(type(value) in safe for value in groups)


def test_checkpoint_holds_plain_data_and_rebuilds_the_same_groups() -> None:
    import io

    model = _tiny_model(anomaly_map=AnomalyMapConfig(score_mode="topk"), damage=DamageConfig(num_squares=90))
    checkpoint = {"hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint["hyper_parameters"], buffer)
    buffer.seek(0)
    hparams = torch.load(buffer, weights_only=True)  # no allow-list: plain data only
    assert hparams["anomaly_map"]["score_mode"] == "topk"
    rebuilt = MLDFR(**hparams, pre_processor=MLDFR.configure_pre_processor((64, 64)), evaluator=False, visualizer=False)
    for key in ("features", "restorer", "damage", "training", "anomaly_map"):
        assert rebuilt.hparams[key] == model.hparams[key], key


def test_default_pre_processor_resizes_to_384_without_normalising() -> None:
    pre_processor = MLDFR.configure_pre_processor()
    assert pre_processor.transform(torch.zeros(1, 3, 10, 10)).shape[-2:] == (384, 384)
    assert not any(isinstance(t, Normalize) for t in pre_processor.transform.transforms)


def test_trainer_arguments_do_not_force_epochs_or_devices() -> None:
    arguments = _tiny_model().trainer_arguments
    assert not {"max_epochs", "devices", "strategy"} & set(arguments)


def test_optimizer_holds_only_restorer_parameters_and_steps_lr_per_epoch() -> None:
    model = _tiny_model()
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.model.restorer.parameters()}
    lrs = []
    for _epoch in range(61):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[29] == pytest.approx(1e-3)
    assert lrs[30] == pytest.approx(8e-4)
    assert lrs[59] == pytest.approx(8e-4)
    assert lrs[60] == pytest.approx(6.4e-4)
    assert pytest.approx(2.8147e-5, rel=1e-4) == 1e-3 * 0.8 ** (499 // 30)


def test_training_step_trains_only_the_restorer_and_keeps_batchnorm_statistics() -> None:
    model = _tiny_model()
    model.on_fit_start()
    model.train()
    model.on_train_epoch_start()
    buffers = {k: v.clone() for k, v in model.model.feature_extractor.state_dict().items() if "running" in k}
    batch = SimpleNamespace(image=torch.rand(2, 3, 64, 64))
    model.log = lambda *args, **kwargs: None  # no trainer attached
    loss = model.training_step(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.model.feature_extractor.parameters())
    assert all(p.grad is not None for p in model.model.restorer.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.model.restorer.parameters())
    for key, value in model.model.feature_extractor.state_dict().items():
        if key in buffers:
            torch.testing.assert_close(value, buffers[key], rtol=0, atol=0)


def test_damage_generator_is_seeded_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny_model()
    images = torch.rand(2, 3, 64, 64)
    draws = []
    torch.manual_seed(7)  # what seed_everything sets: the generator starts from torch's initial seed + rank
    for rank in (0, 1, 0):
        monkeypatch.setattr(MLDFR, "global_rank", property(lambda self, r=rank: r))
        model.on_fit_start()
        draws.append(model.damage(images, generator=model.generator)[1])
    torch.testing.assert_close(draws[0], draws[2])
    assert not torch.equal(draws[0], draws[1])


def test_pre_processor_with_normalize_is_rejected() -> None:
    pre_processor = PreProcessor(transform=Compose([Resize((64, 64)), Normalize([0.5] * 3, [0.5] * 3)]))
    model = _tiny_model(pre_processor=pre_processor)
    with pytest.raises(ValueError, match="Normalize"):
        model.on_train_start()


def test_missing_input_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="input size"):
        _tiny_model(pre_processor=False)


def test_training_step_encodes_each_intact_image_once_and_keeps_the_uncached_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The target side (intact image through the frozen backbones) is the same in every epoch: it is
    # computed once per training image; the damaged side is recomputed at every step.
    torch.manual_seed(3)
    model = _tiny_model()
    extractor = model.model.feature_extractor
    target_calls: list[int] = []
    input_calls: list[int] = []
    target_features, input_features = extractor.target_features, extractor.input_features
    monkeypatch.setattr(extractor, "target_features", lambda x: target_calls.append(len(x)) or target_features(x))
    monkeypatch.setattr(extractor, "input_features", lambda x: input_calls.append(len(x)) or input_features(x))
    model.log = lambda *args, **kwargs: None  # no trainer attached
    images = torch.rand(3, 3, 64, 64)
    batch = SimpleNamespace(image=images, image_path=["a.png", "b.png", "c.png"])
    model.on_fit_start()
    model.train()
    losses = [float(model.training_step(batch)["loss"]) for _ in range(3)]
    assert target_calls == [3]
    assert input_calls == [3, 3, 3]

    model.on_fit_start()  # same damage draws again, now without the cache
    reference = []
    for _ in range(3):
        damaged, _ = model.damage(images, generator=model.generator)
        reference.append(float(model.loss(*model.model(images, damaged))))
    assert losses == pytest.approx(reference, rel=1e-6)
    model.on_train_end()
    assert len(model.target_cache) == 0


def test_default_post_processor_keeps_score_order() -> None:
    from anomalib_ext.post_processing import OrderPreservingPostProcessor

    assert isinstance(_tiny_model(post_processor=True).post_processor, OrderPreservingPostProcessor)


class _LearningRates(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: object, *args: object) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("min_steps", "max_epochs", "epochs", "decay_every"),
    [(0, 2, 2, 1), (7, 2, 4, 2), (3, 2, 2, 1)],  # off; 2 epochs of 2 steps lengthened to 4; already reached
)
def test_min_steps_adds_whole_epochs_and_stretches_the_lr_schedule(
    fake_mvtec: Path, min_steps: int, max_epochs: int, epochs: int, decay_every: int
) -> None:
    model = _tiny_model(training=TrainingConfig(lr_step_size=1, min_steps=min_steps))
    lrs = _LearningRates()
    trainer = Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[lrs]
    )
    datamodule = MVTecAD(root=fake_mvtec, category="toy", train_batch_size=4, eval_batch_size=4, num_workers=0)
    trainer.fit(model, datamodule=datamodule, ckpt_path=None)
    assert trainer.current_epoch == epochs  # 8 training images, batch 4: 2 steps per epoch
    assert trainer.global_step == 2 * epochs
    expected = [1e-3 * 0.8 ** (step // (2 * decay_every)) for step in range(2 * epochs)]
    assert lrs.lrs == pytest.approx(expected)


def test_negative_min_steps_is_an_error_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"training\.min_steps=-1"):
        TrainingConfig(min_steps=-1)
