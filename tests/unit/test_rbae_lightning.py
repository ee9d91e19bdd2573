"""RB-AE Lightning module: defaults, configs, phase-wise gradients and freezing (spec section 10)."""

from __future__ import annotations

import dataclasses
import inspect
from enum import Enum
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser

from anomalib_ext.models import RBAE
from anomalib_ext.models.rbae.config import DefectConfig, NetworkConfig, Phase1Config, Phase2Config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "model"
SIZE = 64
TINY = {
    "network": NetworkConfig(encoder_channels=(8, 8, 16, 16, 16), ffm_mid_channels=8),
    "perceptual_backbone": "efficientnet_lite0",
    "perceptual_layers": (0, 1),
    "pre_trained": False,
}


def tiny(**kwargs) -> RBAE:
    """The tiny model at 64 px; ``kwargs`` win over the tiny arguments."""
    return RBAE(**{**TINY, "pre_processor": RBAE.configure_pre_processor((SIZE, SIZE)), **kwargs})


def test_init_has_the_paper_defaults() -> None:
    """Spec section 4 (paper values) and 10 item 28 (the surface's size: test_registry.py)."""
    parameters = inspect.signature(RBAE.__init__).parameters
    defaults = {name: parameter.default for name, parameter in parameters.items()}
    assert defaults["phase1_fraction"] == pytest.approx(400 / 600)
    assert defaults["lr"] == 1e-4
    assert defaults["training"].weight_decay == 1e-5
    assert defaults["training"].min_steps == 0  # the paper counts epochs
    assert defaults["perceptual_backbone"] == "vgg16.tv_in1k"
    assert defaults["perceptual_layers"] == (1, 3, 6, 8, 11)
    network, phase1, phase2 = defaults["network"], defaults["phase1"], defaults["phase2"]
    assert network.am_weights == (0.2, 0.2, 0.6)
    assert network.rbfrm_patch_sizes == (2, 4)
    assert network.ffm_mid_channels == 64
    assert network.ffm_kernel_size == 5
    assert (phase1.w_rec, phase1.w_per, phase1.w_pixel_dis) == (100, 1, 1)
    assert (phase2.w_rec, phase2.w_per, phase2.w_fea_rep, phase2.w_seg) == (100, 1, 1, 1)
    assert phase1.pixel_dis_levels == (1, 2, 3, 4, 5)
    trainer = yaml.safe_load((CONFIGS / "rbae.yaml").read_text())["trainer"]
    assert trainer["max_epochs"] == 600
    model = tiny()
    assert "max_epochs" not in model.trainer_arguments
    assert model.automatic_optimization is False
    assert model.input_size == (SIZE, SIZE)
    assert model.model.ref_image.shape == (1, 3, SIZE, SIZE)  # the buffers follow the pre-processor's size


@pytest.mark.parametrize("name", ["rbae.yaml", "rbae_cpu.yaml"])
def test_configs_list_only_what_differs_from_the_defaults(name: str) -> None:
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["class_path"] == "anomalib_ext.models.RBAE"
    defaults = {key: p.default for key, p in inspect.signature(RBAE.__init__).parameters.items() if key != "self"}
    for key, value in config["model"]["init_args"].items():
        default = defaults[key]
        pairs = (
            [(f"{key}.{field}", getattr(default, field), v) for field, v in value.items()]
            if dataclasses.is_dataclass(default)
            else [(key, default, value)]
        )
        for where, default_value, config_value in pairs:
            plain_default = list(default_value) if isinstance(default_value, tuple) else default_value
            assert plain_default != config_value, f"{name}: {where} repeats its default"
    # the phases split the trainer's schedule (phase1_fraction), so no second epoch count to keep in step
    assert "phase1" not in config["model"]["init_args"]
    assert "phase2" not in config["model"]["init_args"]


def test_paper_config_asks_for_a_texture_folder() -> None:
    """The paper pastes natural images: without ``anomaly_source_path`` the paper config must not start."""
    init_args = yaml.safe_load((CONFIGS / "rbae.yaml").read_text())["model"]["init_args"]
    assert init_args == {"defects": {"texture_source": "folder"}}
    with pytest.raises(ValueError, match="anomaly_source_path") as error:
        tiny(**init_args)
    assert "DTD" in str(error.value)


def test_cpu_config_builds_the_offline_variant() -> None:
    init_args = yaml.safe_load((CONFIGS / "rbae_cpu.yaml").read_text())["model"]["init_args"]
    model = RBAE(**{**init_args, "pre_trained": False})
    assert model.input_size == (256, 256)
    assert model.lr == 1e-3
    assert model.training_config.min_steps == 96  # 40 demo images: 100 steps, not 15 (README, "Small training sets")
    assert [layer[0].out_channels for layer in model.model.encoder.layers] == [8, 16, 32, 64, 64]
    assert model.loss.perceptual.network.layers == (0, 1, 2)
    assert model.augment_phase1.texture_source == "noise"
    assert isinstance(model.hparams["network"], NetworkConfig)  # plain YAML data became the group


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RBAE, "model", skip={"pre_processor", "post_processor", "evaluator", "visualizer"})
    return parser


def test_groups_parse_from_the_command_line_and_a_bad_choice_names_the_accepted_values() -> None:
    tiny_args = [
        "--model.pre_trained=false",
        "--model.perceptual_backbone=efficientnet_lite0",
        "--model.perceptual_layers=[0, 1]",
        "--model.network.encoder_channels=[8, 8, 16, 16, 16]",
        "--model.network.ffm_mid_channels=8",
    ]
    parser = _parser()
    parsed = parser.parse_args([*tiny_args, "--model.phase2.w_seg=2", "--model.network.score_mode=topk"])
    model = parser.instantiate_classes(parsed).model
    assert model.phase2_config == Phase2Config(w_seg=2.0)
    assert model.hparams["network"].score_mode == "topk"
    assert model.loss.w2 == (100.0, 1.0, 1.0, 2.0)
    assert model.model.scorer.score_mode.value == "topk"
    with pytest.raises(ArgumentError, match="sigmoid"):
        _parser().parse_args(["--model.network.decoder_out_activation=relu"])
    with pytest.raises(ArgumentError, match="minmax"):
        _parser().parse_args(["--model.phase1.pixel_dis_norm=median"])


def test_arguments_that_accepted_only_their_default_are_gone() -> None:
    parameters = set(inspect.signature(RBAE.__init__).parameters)
    for removed in ("decoder_skip_levels", "encoder_block", "lr_scheduler", "phase1_bypass_rbam", "input_size"):
        assert removed not in parameters
    with pytest.raises(TypeError, match="decoder_skip_levels"):
        RBAE(decoder_skip_levels=(1, 2, 3, 4), **TINY)


def test_phase_epochs_are_set_together() -> None:
    with pytest.raises(ValueError, match=r"phase2\.epochs"):
        tiny(phase1=Phase1Config(epochs=400))


def test_checkpoint_with_the_groups_loads_with_weights_only(tmp_path: Path) -> None:
    model = tiny(defects=DefectConfig(seed=3), phase2=Phase2Config(reference_selection="random"))
    safe = set(RBAE.checkpoint_safe_globals())
    for value in model.hparams.values():
        if dataclasses.is_dataclass(value) or isinstance(value, Enum):
            assert type(value) in safe, type(value)
    path = tmp_path / "rbae.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    loaded = RBAE.load_from_checkpoint(path, map_location="cpu")  # anomalib loads with weights_only=True
    assert loaded.defects == DefectConfig(seed=3)
    assert loaded.phase2_config.reference_selection == "random"
    assert loaded.hparams["network"] == TINY["network"]


def test_a_reloaded_checkpoint_keeps_the_trained_input_size(tmp_path: Path) -> None:
    """RB-AE's own checkpoint hook must keep anomalib's: without it the pre-processor came back at 256 px."""
    model = tiny()
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    assert "rbae_reference_candidates" in checkpoint
    path = tmp_path / "rbae.ckpt"
    torch.save(checkpoint, path)
    loaded = RBAE.load_from_checkpoint(path, map_location="cpu")
    image = torch.rand(1, 3, 2 * SIZE, 2 * SIZE)
    assert loaded.pre_processor(image).shape[-2:] == (SIZE, SIZE)


def test_pre_processor_resizes_only() -> None:
    model = tiny()
    out = model.pre_processor.transform(torch.rand(1, 3, 100, 100))
    assert out.shape == (1, 3, 64, 64)
    assert 0 <= out.min() <= out.max() <= 1


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:40, 20:44] = 1
    defective = torch.where(mask.bool(), torch.rand_like(clean), clean)
    return clean, defective, mask


def test_phase1_perceptual_loss_reaches_decoder_and_rbam_msfdm_stay_idle() -> None:
    model = tiny()
    clean, defective, _ = _batch()
    model.model.train()
    outputs = model.model(defective, clean_images=clean, phase=1)
    model.loss.perceptual(clean, outputs["reconstruction"]).backward()  # catches trap T5
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.decoder.parameters())
    assert all(p.grad is None for p in model.model.rbam.parameters())
    assert all(p.grad is None for p in model.model.fdm.parameters())


@pytest.mark.parametrize("detach", [False, True])
def test_phase2_seg_loss_gradient_to_decoder_follows_a25(detach: bool) -> None:
    model = tiny()
    clean, defective, mask = _batch()
    model.model.set_reference(clean[:1])
    model.model.train()
    outputs = model.model(defective, clean_images=clean, phase=2, detach_rec_for_seg=detach)
    model.loss.seg(outputs["logits"], mask).backward()
    grad = sum(p.grad.abs().sum() for p in model.model.decoder.parameters() if p.grad is not None)
    assert (grad == 0) if detach else (grad > 0)


def test_phase2_step_leaves_encoder_weights_and_bn_stats_unchanged() -> None:
    model = tiny()
    clean, defective, mask = _batch()
    model.model.train()
    model.model(defective, clean_images=clean, phase=1)  # non-trivial BN statistics
    model.model.set_reference(clean[:1])
    model.model.train()
    before = {k: v.clone() for k, v in model.model.encoder.state_dict().items()}
    rbam_before = [p.clone() for p in model.model.rbam.parameters()]
    _, opt2 = model.configure_optimizers()
    outputs = model.model(defective, clean_images=clean, phase=2)
    loss, terms = model.loss.phase2(clean, mask, outputs)
    assert all(torch.isfinite(t) for t in terms.values())
    opt2.zero_grad()
    (loss + model._all_params_term()).backward()
    opt2.step()
    for key, value in model.model.encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(rbam_before, model.model.rbam.parameters(), strict=True))


def test_zero_term_gives_every_parameter_a_gradient_in_phase1() -> None:
    """DDP with find_unused_parameters=False needs a gradient for every parameter in every step."""
    model = tiny()
    clean, defective, mask = _batch()
    model.model.train()
    outputs = model.model(defective, clean_images=clean, phase=1)
    loss, _ = model.loss.phase1(clean, mask, outputs)
    (loss + model._all_params_term()).backward()
    assert all(p.grad is not None for p in model.model.parameters())
