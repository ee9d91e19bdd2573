"""Unit tests of the N2N torch model and Lightning module (spec 2.2, 2.4, 2.5; tests 6, 7, 15-19)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from anomalib import LearningType
from anomalib.data import InferenceBatch
from lightning.pytorch.callbacks import EarlyStopping
from torchvision.transforms.v2 import Normalize

from anomalib_ext.models.n2n import N2N
from anomalib_ext.models.n2n.config import ErrorMapConfig, NetworkConfig, NoiseConfig, TrainingConfig
from anomalib_ext.models.n2n.torch_model import N2NModel

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
SMALL = {"image_size": (32, 32), "base_channels": 8}


def small_module(size: tuple[int, int] = (32, 32), **kwargs) -> N2N:
    """The Lightning module at ``size``, C = 8 (the input size comes from the pre-processor)."""
    kwargs.setdefault("base_channels", 8)
    return N2N(pre_processor=N2N.configure_pre_processor(size), **kwargs)


def test_eval_forward_returns_inference_batch_with_spec_shapes() -> None:
    model = N2NModel(**SMALL).eval()
    out = model(torch.rand(3, 3, 32, 32) * 2 - 1)
    assert isinstance(out, InferenceBatch)
    assert out.anomaly_map.shape == (3, 1, 32, 32)
    assert out.pred_score.shape == (3,)
    torch.testing.assert_close(out.pred_score, out.anomaly_map.amax(dim=(-3, -2, -1)))
    assert (out.anomaly_map >= 0).all()


def test_training_forward_returns_reconstruction_and_clean() -> None:
    model = N2NModel(**SMALL).train()
    clean = torch.rand(2, 3, 32, 32) * 2 - 1
    reconstruction, target = model(clean, generator=torch.Generator().manual_seed(0))
    assert reconstruction.shape == (2, 3, 32, 32)
    assert target is clean


def test_training_noise_is_fresh_and_eval_noise_is_fixed() -> None:
    model = N2NModel(**SMALL)
    clean = torch.rand(2, 3, 32, 32) * 2 - 1
    model.train()
    generator = torch.Generator().manual_seed(0)
    first, _ = model(clean, generator=generator)
    second, _ = model(clean, generator=generator)
    assert not torch.equal(first, second)
    model.eval()
    assert torch.equal(model(clean).anomaly_map, model(clean).anomaly_map)


def test_eval_noise_buffer_is_seeded_draw_and_persistent() -> None:
    model = N2NModel(image_size=(32, 32), base_channels=8, noise=NoiseConfig(eval_seed=3, eval_samples=2))
    expected = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(3)) * 0.5 + 0.5
    torch.testing.assert_close(model.eval_noise, expected)
    assert "eval_noise" in model.state_dict()
    lightning = small_module(post_processor=False, evaluator=False, visualizer=False)
    assert "model.eval_noise" in lightning.state_dict()
    # Gaussian windows derive from config: not persistent
    assert not any(key.endswith(("wv", "wh", "wv_last", "wh_last")) for key in lightning.state_dict())


def test_lambda_zero_feeds_the_clean_image() -> None:
    model = N2NModel(**SMALL, noise_lambda=0.0).eval()
    clean = torch.rand(1, 3, 32, 32)
    assert torch.equal(model._noisy_eval_input(clean), clean)


@pytest.mark.parametrize(("space", "mean", "std"), [("normalized", 0.15, 0.15), ("pixel", 0.0, 0.3)])
def test_noise_statistics(space: str, mean: float, std: float) -> None:
    """x~ - 0.7 x0 ~ N(0.15, 0.15^2) in normalized space, N(0, 0.3^2) in pixel space (spec 2.2)."""
    model = N2NModel(**SMALL, noise=NoiseConfig(space=space))
    x0 = torch.rand(64, 3, 64, 64) * 2 - 1
    noisy, _ = model.noise_blend(x0, generator=torch.Generator().manual_seed(0))
    residual = noisy - 0.7 * x0
    assert abs(float(residual.mean()) - mean) < 0.002
    assert abs(float(residual.std()) - std) < 0.003


def test_multiple_eval_noise_samples_average_maps() -> None:
    model = N2NModel(image_size=(32, 32), base_channels=8, noise=NoiseConfig(eval_samples=2)).eval()
    clean = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(clean)
    maps = []
    for k in range(2):
        noisy = model.noise_blend.blend(clean, model.eval_noise[k : k + 1])
        maps.append(model.error.error_map(model.network(noisy), clean))
    torch.testing.assert_close(out.anomaly_map, torch.stack(maps).mean(dim=0), atol=1e-6, rtol=0)


def test_wrong_input_size_raises_clear_error() -> None:
    model = N2NModel(**SMALL).eval()
    with pytest.raises(ValueError, match="image_size"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples"):
        N2NModel(image_size=(36, 36), base_channels=8)


def test_val_loss_equals_training_objective_for_the_same_noise() -> None:
    module = small_module(post_processor=False, evaluator=False, visualizer=False)
    module.model.eval()
    clean = torch.rand(2, 3, 32, 32) * 2 - 1
    noisy = module.model.noise_blend.blend(clean, module.model.eval_noise)
    loss = module.loss(module.model.network(noisy), clean)
    torch.testing.assert_close(loss, module.model(clean).anomaly_map.mean())


def test_optimizer_scheduler_and_trainer_settings() -> None:
    module = small_module(lr=1e-4)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.5, 0.999)
    assert optimizer.defaults["weight_decay"] == 0.01
    assert config["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(201):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[100] == pytest.approx(1e-6)
    assert lrs[200] == pytest.approx(1e-4)
    assert module.trainer_arguments == {"gradient_clip_val": 0, "num_sanity_val_steps": 0}
    assert module.learning_type == LearningType.ONE_CLASS
    stoppers = [cb for cb in module.configure_callbacks() if isinstance(cb, EarlyStopping)]
    assert len(stoppers) == 1
    assert stoppers[0].monitor == "val_loss"
    assert stoppers[0].patience == 20


def test_pre_processor_normalises_with_half_and_uses_image_size() -> None:
    assert N2N(base_channels=8).model.image_size == (256, 256)  # the paper's size, from the default pre-processor
    module = small_module((32, 48))
    normalize = [t for t in module.pre_processor.transform.transforms if isinstance(t, Normalize)]
    assert len(normalize) == 1
    assert list(normalize[0].mean) == [0.5] * 3
    assert list(normalize[0].std) == [0.5] * 3
    grey = torch.full((1, 3, 64, 64), 0.5)
    out = module.pre_processor.transform(grey)
    assert out.shape == (1, 3, 32, 48)
    assert out.abs().max() < 1e-6
    assert module.model.image_size == (32, 48)
    assert module.model.eval_noise.shape == (1, 3, 32, 48)


def test_lightning_init_has_the_paper_defaults() -> None:
    parameters = inspect.signature(N2N.__init__).parameters  # the surface's size: test_registry.py
    defaults = {name: p.default for name, p in parameters.items()}
    assert defaults["base_channels"] == 64
    assert defaults["noise_lambda"] == 0.3
    assert defaults["lr"] == 1e-4
    assert defaults["t_max"] == 100
    assert defaults["early_stopping_patience"] == 20
    assert defaults["input_unshuffle"] == 1
    assert defaults["training"].eta_min == 1e-6
    assert defaults["training"].betas == (0.5, 0.999)


def test_groups_reach_the_torch_model() -> None:
    module = small_module(
        network=NetworkConfig(use_residual_attention=False, depth=3),
        noise=NoiseConfig(at_test=False),
        error_map=ErrorMapConfig(score_mode="topk", topk_fraction=0.5, sigma=1.0, channel_reduction="max"),
        training=TrainingConfig(loss_reduction="sum", early_stopping_monitor="train_loss_epoch"),
    )
    assert module.model.network.depth == 3
    assert not module.model.noise_at_test
    assert module.model.scorer.topk_fraction == 0.5
    assert module.model.error.metric.channel_reduction == "max"
    assert module.loss.reduction == "sum"
    assert all(cb.monitor == "train_loss_epoch" for cb in module.configure_callbacks() if hasattr(cb, "monitor"))


def test_input_size_and_normalisation_come_from_the_pre_processor() -> None:
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Resize

    module = N2N(base_channels=8, pre_processor=PreProcessor(transform=Compose([Resize((32, 32))])))
    assert module.model.noise_blend.noise_space == "normalized"
    assert module.loss.scale == 1.0  # no Normalize: images already in [0, 1]
    assert module.loss.shift == 0.0
    with pytest.raises(ValueError, match="input size"):
        N2N(base_channels=8, pre_processor=False)
    imagenet = PreProcessor(transform=Compose([Resize((32, 32)), Normalize([0.485, 0.456, 0.406], [0.2, 0.2, 0.2])]))
    with pytest.raises(ValueError, match="same normalisation"):
        N2N(base_channels=8, pre_processor=imagenet)


def test_checkpoint_safe_globals_cover_the_saved_hyperparameters() -> None:
    module = small_module(noise=NoiseConfig(eval_samples=2), training=TrainingConfig(eta_min=0.0))
    safe = set(N2N.checkpoint_safe_globals())
    values = list(module.hparams.values())
    assert any(dataclasses.is_dataclass(value) for value in values)
    for value in values:
        if dataclasses.is_dataclass(value):
            assert type(value) in safe, type(value)


def test_checkpoint_of_another_input_size_loads_with_weights_only(tmp_path: Path) -> None:
    """``load_from_checkpoint`` builds the default 256 px model, restores the 32 px pre-processor, rebuilds."""
    from anomalib.utils.serialization import anomalib_safe_globals
    from lightning.pytorch import Trainer

    module = small_module(noise=NoiseConfig(eval_seed=4), visualizer=False)
    trainer = Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(module)
    path = tmp_path / "n2n.ckpt"
    trainer.save_checkpoint(path, weights_only=False)
    with anomalib_safe_globals(extra=N2N.checkpoint_safe_globals()):
        assert torch.load(path, weights_only=True)  # the saved hyper-parameters are safe globals
    loaded = N2N.load_from_checkpoint(path, visualizer=False)
    assert loaded.model.image_size == (32, 32)
    assert loaded.noise_config == NoiseConfig(eval_seed=4)
    torch.testing.assert_close(loaded.model.eval_noise, module.model.eval_noise)
    clean = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded.model.eval()(clean).anomaly_map, module.model.eval()(clean).anomaly_map)


@pytest.mark.parametrize("name", ["n2n.yaml", "n2n_cpu.yaml"])
def test_configs_list_only_what_differs_from_the_defaults(name: str) -> None:
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["class_path"] == "anomalib_ext.models.N2N"
    defaults = {key: p.default for key, p in inspect.signature(N2N.__init__).parameters.items() if key != "self"}
    for key, value in config["model"].get("init_args", {}).items():
        default = defaults[key]
        if dataclasses.is_dataclass(default):
            for field, field_value in value.items():
                assert getattr(default, field) != field_value, f"{name}: {key}.{field} repeats its default"
        else:
            assert default != value, f"{name}: {key} repeats its default"
    N2N(**config["model"].get("init_args", {}), pre_processor=N2N.configure_pre_processor((64, 64)))


def test_cpu_config_holds_the_benchmarked_settings() -> None:
    config = yaml.safe_load((CONFIGS / "n2n_cpu.yaml").read_text())
    assert config["model"]["init_args"] == {
        "base_channels": 16,
        "input_unshuffle": 2,
        "lr": 0.002,
        "t_max": 4,
        "early_stopping_patience": 0,
        "restore_best_weights": False,
    }
    assert config["data"]["init_args"]["train_batch_size"] == 8
    assert config["trainer"]["max_epochs"] == 4
    assert yaml.safe_load((CONFIGS / "n2n.yaml").read_text())["trainer"]["max_epochs"] == 500
