"""Tests of the MLDFR Lightning module: configs, optimiser, schedule, one training step, seeding."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_ext.models.mldfr import MLDFR

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
NON_METHOD_ARGS = {"self", "post_processor", "evaluator", "visualizer"}


def _tiny_model(**kwargs: object) -> MLDFR:
    defaults = {
        "cnn_backbone": "efficientnet_lite0",
        "cnn_layers": [1, 2, 3],
        "vit_backbone": None,
        "deep_branch": True,
        "num_blocks": 1,
        "gaussian_sigma": 2.0,
        "pre_trained": False,
        "pre_processor": MLDFR.configure_pre_processor((64, 64)),
        "evaluator": False,
        "visualizer": False,
    }
    defaults.update(kwargs)
    return MLDFR(**defaults)


@pytest.mark.parametrize("name", ["mldfr.yaml", "mldfr_cpu.yaml"])
def test_config_keys_are_constructor_arguments(name: str) -> None:
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["class_path"] == "anomalib_ext.models.MLDFR"
    arguments = set(inspect.signature(MLDFR.__init__).parameters) - NON_METHOD_ARGS
    assert set(config["model"]["init_args"]) == arguments
    assert "max_epochs" in config["trainer"]


def test_paper_config_has_paper_defaults() -> None:
    init_args = yaml.safe_load((CONFIGS / "mldfr.yaml").read_text())["model"]["init_args"]
    signature = inspect.signature(MLDFR.__init__).parameters
    for key, value in init_args.items():
        if key == "pre_processor":
            assert value["init_args"]["transform"]["init_args"]["size"] == [384, 384]
            continue
        default = signature[key].default
        expected = list(default) if isinstance(default, tuple) else default
        assert value == pytest.approx(expected) if isinstance(value, float) else value == expected, key


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
    model = _tiny_model(damage_seed=7)
    images = torch.rand(2, 3, 64, 64)
    draws = []
    for rank in (0, 1, 0):
        monkeypatch.setattr(MLDFR, "global_rank", property(lambda self, r=rank: r))
        model.on_fit_start()
        draws.append(model.damage(images, generator=model.damage_generator)[1])
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
    model = _tiny_model(damage_seed=3)
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
        damaged, _ = model.damage(images, generator=model.damage_generator)
        reference.append(float(model.loss(*model.model(images, damaged))))
    assert losses == pytest.approx(reference, rel=1e-6)
    model.on_train_end()
    assert len(model.target_cache) == 0


def test_default_post_processor_keeps_score_order() -> None:
    from anomalib_ext.post_processing import OrderPreservingPostProcessor

    assert isinstance(_tiny_model(post_processor=True).post_processor, OrderPreservingPostProcessor)
