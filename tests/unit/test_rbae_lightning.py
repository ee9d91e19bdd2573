"""RB-AE Lightning module: defaults, configs, phase-wise gradients and freezing (spec section 10)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from anomalib_ext.models import RBAE

REPO = Path(__file__).resolve().parents[2]
COMPONENT_ARGS = {"self", "pre_processor", "post_processor", "evaluator", "visualizer"}
TINY = {
    "input_size": (64, 64),
    "encoder_channels": (8, 8, 16, 16, 16),
    "ffm_mid_channels": 8,
    "perceptual_backbone": "efficientnet_lite0",
    "perceptual_layers": (0, 1),
    "pre_trained": False,
}


def _constructor_args() -> set[str]:
    return set(inspect.signature(RBAE.__init__).parameters) - COMPONENT_ARGS


@pytest.mark.parametrize("config", ["rbae.yaml", "rbae_cpu.yaml"])
def test_config_keys_equal_constructor_args(config: str) -> None:
    data = yaml.safe_load((REPO / "configs" / "model" / config).read_text())
    assert data["model"]["class_path"] == "anomalib_ext.models.RBAE"
    init_args = data["model"]["init_args"]
    assert set(init_args) == _constructor_args()
    # the phases split the trainer's schedule (phase1_fraction), so no second epoch count to keep in step
    assert init_args["phase1_epochs"] is None
    assert init_args["phase2_epochs"] is None


# keys where the paper config differs from the constructor defaults on purpose
PAPER_CONFIG_OVERRIDES = {"texture_source": "folder"}  # the paper's textures are natural images: ask for a folder


def test_paper_config_values_equal_the_defaults() -> None:
    init_args = yaml.safe_load((REPO / "configs" / "model" / "rbae.yaml").read_text())["model"]["init_args"]
    defaults = {n: p.default for n, p in inspect.signature(RBAE.__init__).parameters.items() if n not in COMPONENT_ARGS}
    defaults.update(PAPER_CONFIG_OVERRIDES)
    for name, value in init_args.items():
        default = list(defaults[name]) if isinstance(defaults[name], tuple) else defaults[name]
        assert value == pytest.approx(default) if isinstance(value, float) else value == default, name


def test_paper_config_asks_for_a_texture_folder() -> None:
    """The paper pastes natural images: without ``anomaly_source_path`` the paper config must not start."""
    init_args = yaml.safe_load((REPO / "configs" / "model" / "rbae.yaml").read_text())["model"]["init_args"]
    assert init_args["anomaly_source_path"] is None
    with pytest.raises(ValueError, match="anomaly_source_path") as error:
        RBAE(**{**init_args, **TINY})
    assert "DTD" in str(error.value)


def test_paper_defaults() -> None:
    """Spec section 10 item 28 (max_epochs lives in the config, not in trainer_arguments)."""
    defaults = {n: p.default for n, p in inspect.signature(RBAE.__init__).parameters.items()}
    assert defaults["am_weights"] == (0.2, 0.2, 0.6)
    assert defaults["rbfrm_patch_sizes"] == (2, 4)
    assert defaults["ffm_mid_channels"] == 64
    assert defaults["ffm_kernel_size"] == 5
    assert (defaults["w_rec_1"], defaults["w_per_1"], defaults["w_pixel_dis_1"]) == (100, 1, 1)
    assert (defaults["w_rec_2"], defaults["w_per_2"], defaults["w_fea_rep_2"], defaults["w_seg_2"]) == (100, 1, 1, 1)
    assert defaults["lr"] == 1e-4
    assert defaults["weight_decay"] == 1e-5
    assert defaults["phase1_fraction"] == pytest.approx(400 / 600)
    trainer = yaml.safe_load((REPO / "configs" / "model" / "rbae.yaml").read_text())["trainer"]
    assert trainer["max_epochs"] == 600
    assert defaults["perceptual_backbone"] == "vgg16.tv_in1k"
    assert defaults["perceptual_layers"] == (1, 3, 6, 8, 11)
    model = RBAE(**TINY)
    assert "max_epochs" not in model.trainer_arguments
    assert model.automatic_optimization is False


def test_pre_processor_resizes_only() -> None:
    model = RBAE(**TINY)
    out = model.pre_processor.transform(torch.rand(1, 3, 100, 100))
    assert out.shape == (1, 3, 64, 64)
    assert 0 <= out.min() <= out.max() <= 1


def test_unimplemented_assumption_alternatives_are_rejected() -> None:
    with pytest.raises(NotImplementedError, match="decoder_skip_levels"):
        RBAE(decoder_skip_levels=(1, 2, 3, 4), **TINY)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 16:40, 20:44] = 1
    defective = torch.where(mask.bool(), torch.rand_like(clean), clean)
    return clean, defective, mask


def test_phase1_perceptual_loss_reaches_decoder_and_rbam_msfdm_stay_idle() -> None:
    model = RBAE(**TINY)
    clean, defective, _ = _batch()
    model.model.train()
    outputs = model.model(defective, clean_images=clean, phase=1)
    model.loss.perceptual(clean, outputs["reconstruction"]).backward()  # catches trap T5
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.decoder.parameters())
    assert all(p.grad is None for p in model.model.rbam.parameters())
    assert all(p.grad is None for p in model.model.fdm.parameters())


@pytest.mark.parametrize("detach", [False, True])
def test_phase2_seg_loss_gradient_to_decoder_follows_a25(detach: bool) -> None:
    model = RBAE(**TINY)
    clean, defective, mask = _batch()
    model.model.set_reference(clean[:1])
    model.model.train()
    outputs = model.model(defective, clean_images=clean, phase=2, detach_rec_for_seg=detach)
    model.loss.seg(outputs["logits"], mask).backward()
    grad = sum(p.grad.abs().sum() for p in model.model.decoder.parameters() if p.grad is not None)
    assert (grad == 0) if detach else (grad > 0)


def test_phase2_step_leaves_encoder_weights_and_bn_stats_unchanged() -> None:
    model = RBAE(**TINY)
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
    model = RBAE(**TINY)
    clean, defective, mask = _batch()
    model.model.train()
    outputs = model.model(defective, clean_images=clean, phase=1)
    loss, _ = model.loss.phase1(clean, mask, outputs)
    (loss + model._all_params_term()).backward()
    assert all(p.grad is not None for p in model.model.parameters())
