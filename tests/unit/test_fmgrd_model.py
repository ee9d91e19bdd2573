"""Tests of ``FmgrdModel`` (torch) and the ``FMGRD`` Lightning module: shapes, counts, freezing, optimiser, configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from anomalib.data import InferenceBatch
from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode, AnomalyMapGenerator

from anomalib_ext.backbones import packaged_state_dict
from anomalib_ext.models import FMGRD
from anomalib_ext.models.fmgrd.config import AttentionConfig, BottleneckConfig, FMMConfig
from anomalib_ext.models.fmgrd.torch_model import FmgrdModel

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
LITE0_LAYERS = ("blocks.1", "blocks.2", "blocks.4")


def n_params(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


@pytest.fixture(scope="module")
def wrn_model() -> FmgrdModel:
    return FmgrdModel("wide_resnet50_2", input_size=(64, 64), pre_trained=False)


def test_wrn50_parameter_counts_match_the_spec(wrn_model):
    assert n_params(wrn_model.encoder) == 24_862_528
    assert not any(p.requires_grad for p in wrn_model.encoder.parameters())
    assert n_params(wrn_model.msff) == 13_769_728
    assert n_params(wrn_model.oce) == 41_971_712
    assert n_params(wrn_model.decoder) == 24_917_504
    assert [n_params(f) for f in wrn_model.fmm] == [1_245_952, 4_982_272, 19_926_016]
    assert n_params(wrn_model, trainable=True) == 109_767_424


def test_wrn50_training_forward_shapes_follow_the_shape_table(wrn_model):
    wrn_model.train()
    teacher, generated, decoded = wrn_model(torch.rand(1, 3, 64, 64))
    expected = [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4)]  # 64 px: strides 4/8/16
    assert [tuple(t.shape) for t in teacher] == expected
    assert [tuple(t.shape) for t in generated] == expected
    assert [tuple(t.shape) for t in decoded] == expected


@pytest.mark.parametrize(
    ("backbone", "layers", "channels"),
    [
        ("resnet18", ("layer1", "layer2", "layer3"), (64, 128, 256)),
        ("efficientnet_lite0", LITE0_LAYERS, (24, 40, 112)),
    ],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_train_and_eval_outputs_have_the_documented_shapes(backbone, layers, channels, batch):
    size = 64
    model = FmgrdModel(backbone, input_size=(size, size), layers=layers, pre_trained=False)
    images = torch.rand(batch, 3, size, size)
    teacher, generated, _ = model.train()(images)
    assert [tuple(t.shape) for t in generated] == [
        (batch, c, size // s, size // s) for c, s in zip(channels, (4, 8, 16), strict=True)
    ]
    assert [t.shape for t in teacher] == [t.shape for t in generated]
    bottleneck = model.oce(model.scsatt(model.msff(teacher)))
    expected_fb = 512 if backbone == "resnet18" else 320
    assert bottleneck.shape == (batch, expected_fb, size // 32, size // 32)
    out = model.eval()(images)
    assert isinstance(out, InferenceBatch)
    assert out.anomaly_map.shape == (batch, 1, size, size)
    assert out.pred_score.shape == (batch,)
    torch.testing.assert_close(out.pred_score, out.anomaly_map.amax(dim=(1, 2, 3)))


def test_offline_variant_trainable_count_matches_spec_section_8():
    model = FmgrdModel("efficientnet_lite0", input_size=(64, 64), layers=LITE0_LAYERS, pre_trained=False)
    assert n_params(model, trainable=True) == 4_299_552
    assert n_params(model.encoder) == 700_768  # Lite0 up to blocks.4: the stages after the deepest tap are removed


def test_a_training_step_leaves_the_teacher_untouched_and_reaches_every_trainable_parameter():
    """No unused parameters (DDP with find_unused_parameters=False) and a frozen teacher incl. BN stats."""
    model = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False).train()
    teacher_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    oce_bn_before = model.oce.layers[0].bn1.running_mean.clone()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    teacher, generated, _ = model(torch.rand(2, 3, 64, 64))
    loss = sum(
        (1 - torch.nn.functional.cosine_similarity(t, g)).mean() for t, g in zip(teacher, generated, strict=True)
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    optimiser.step()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert model.encoder.training is False
    assert not torch.equal(model.oce.layers[0].bn1.running_mean, oce_bn_before)


def test_tagged_backbone_names_are_stripped_for_architecture_lookups():
    model = FmgrdModel("resnet18.tv_in1k", input_size=(64, 64), pre_trained=False)
    assert type(model.oce.layers[0]).__name__ == "BasicBlock"
    assert len(model.oce.layers) == 2


def test_state_dict_holds_teacher_and_student_batchnorm_statistics():
    model = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False)
    keys = set(model.state_dict())
    assert "encoder.feature_extractor.bn1.running_mean" in keys
    assert "oce.layers.0.bn1.running_var" in keys
    assert "decoder.layer1.0.bn1.num_batches_tracked" in keys


def small_lightning_model(**kwargs) -> FMGRD:
    return FMGRD(
        backbone="resnet18",
        pre_trained=False,
        pre_processor=FMGRD.configure_pre_processor((64, 64)),
        **kwargs,
    )


def test_optimiser_holds_only_the_student_side_with_paper_settings():
    model = small_lightning_model()
    optimiser = model.configure_optimizers()
    params = [p for group in optimiser.param_groups for p in group["params"]]
    assert sum(p.numel() for p in params) == 14_780_096  # spec section 3, ResNet-18 trainable total
    group = optimiser.param_groups[0]
    assert group["lr"] == 1e-3
    assert group["betas"] == (0.5, 0.999)
    assert group["weight_decay"] == pytest.approx(2e-5)
    assert not any(p is q for p in params for q in model.model.encoder.parameters())


def test_trainer_arguments_do_not_force_epochs_or_devices_and_evaluator_has_aupro():
    model = small_lightning_model()
    assert model.trainer_arguments == {"gradient_clip_val": 0, "num_sanity_val_steps": 0}
    aupro = next(m for m in model.evaluator.test_metrics if type(m).__name__ == "AUPRO")
    assert aupro.fpr_limit == pytest.approx(0.3)


def test_training_step_encodes_each_training_image_once_across_epochs():
    from anomalib.data import ImageBatch

    model = small_lightning_model()
    calls = []
    encode = model.model.encode
    model.model.encode = lambda images: calls.append(len(images)) or encode(images)
    model.log = lambda *args, **kwargs: None
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64), image_path=["a.png", "b.png"])
    model.on_fit_start()
    for _ in range(3):  # three epochs over the same two images
        loss = model.training_step(batch)["loss"]
    assert calls == [2]
    assert loss.requires_grad


def test_checkpoint_safe_globals_cover_the_saved_hyperparameters():
    model = small_lightning_model(fmm=FMMConfig(eval_mode="expectation"))
    safe = set(FMGRD.checkpoint_safe_globals())
    for value in model.hparams.values():
        if dataclasses.is_dataclass(value) or isinstance(value, __import__("enum").Enum):
            assert type(value) in safe, type(value)


@pytest.mark.parametrize("name", ["fmgrd.yaml", "fmgrd_cpu.yaml"])
def test_configs_list_only_what_differs_from_the_defaults(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    assert config["model"]["class_path"] == "anomalib_ext.models.FMGRD"
    defaults = {
        key: parameter.default
        for key, parameter in __import__("inspect").signature(FMGRD.__init__).parameters.items()
        if key != "self"
    }
    for key, value in config["model"]["init_args"].items():
        if key == "pre_processor":  # one of anomalib's components (``**components``), not in the signature
            continue
        default = defaults[key]
        if dataclasses.is_dataclass(default):
            for field, field_value in value.items():
                assert getattr(default, field) != field_value, f"{name}: {key}.{field} repeats its default"
        else:
            assert default != value, f"{name}: {key} repeats its default"
            assert list(default or []) != value, f"{name}: {key} repeats its default"
    assert config["data"]["init_args"]["train_batch_size"] == 16  # the paper's batch size
    assert config["trainer"]["max_epochs"] > 0


def test_cpu_config_builds_the_offline_variant():
    args = yaml.safe_load((CONFIGS / "fmgrd_cpu.yaml").read_text())["model"]["init_args"]
    args.pop("pre_processor", None)
    args["pre_trained"] = False
    model = FMGRD(**args, pre_processor=FMGRD.configure_pre_processor((128, 128)))
    assert model.model.encoder.out_dims == [24, 40, 112]
    assert model.model.score_levels == [1, 2]  # the image score without the stride-4 level
    assert n_params(model.model, trainable=True) == 4_299_552


def test_pre_trained_teacher_carries_the_packaged_imagenet_weights():
    model = FmgrdModel("efficientnet_lite0", input_size=(64, 64), layers=LITE0_LAYERS, pre_trained=True)
    packaged = packaged_state_dict("efficientnet_lite0")
    teacher = model.encoder.feature_extractor.state_dict()
    assert torch.equal(teacher["conv_stem.weight"], packaged["conv_stem.weight"])
    assert torch.equal(teacher["blocks.4.0.conv_pw.weight"], packaged["blocks.4.0.conv_pw.weight"])
    random = FmgrdModel("efficientnet_lite0", input_size=(64, 64), layers=LITE0_LAYERS, pre_trained=False)
    assert not torch.equal(
        random.encoder.feature_extractor.state_dict()["conv_stem.weight"], packaged["conv_stem.weight"]
    )


def test_map_keeps_orientation_an_off_diagonal_outlier_stays_off_diagonal():
    """A student error in one off-diagonal cell of the coarsest level peaks there (a transposed map fails)."""
    model = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, sigma=1).eval()
    teacher = [torch.ones(1, c, s, s) for c, s in ((64, 16), (128, 8), (256, 4))]
    generated = [t.clone() for t in teacher]
    generated[2][0, :, 0, 3] = -1.0  # row 0, column 3 of the 4 x 4 grid: the top-right corner
    anomaly_map = model.predict(teacher, generated).anomaly_map[0, 0]
    row, column = divmod(int(anomaly_map.argmax()), anomaly_map.shape[-1])
    assert row < 16
    assert column >= 48


def _outlier_features() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Teacher and student features of resnet18's levels at 64 px, the student wrong in a few cells."""
    generator = torch.Generator().manual_seed(0)
    teacher = [torch.rand(1, c, s, s, generator=generator) + 0.5 for c, s in ((64, 16), (128, 8), (256, 4))]
    generated = [t + 0.3 * torch.rand(t.shape, generator=generator) for t in teacher]
    generated[0][0, :, 3, 11] = -1.0
    return teacher, generated


def test_score_sigma_scores_the_narrow_map_and_returns_the_wide_one():
    """``sigma=4, score_sigma=1``: the image score of RD's map at sigma 1, the map of RD's map at sigma 4."""
    teacher, generated = _outlier_features()
    both = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, sigma=4, score_sigma=1).eval()
    narrow = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, sigma=1).eval()
    wide = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, sigma=4).eval()
    output = both.predict(teacher, generated)
    torch.testing.assert_close(output.pred_score, narrow.predict(teacher, generated).pred_score)
    # sigma 4 as sigma 1 widened by sqrt(15): equal to RD's direct sigma-4 blur away from the reflected border
    expected = wide.predict(teacher, generated).anomaly_map
    torch.testing.assert_close(output.anomaly_map[..., 16:48, 16:48], expected[..., 16:48, 16:48], rtol=1e-3, atol=1e-4)
    assert output.pred_score > output.anomaly_map.amax()  # the narrow map peaks higher
    reverse = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, sigma=1, score_sigma=4).eval()
    torch.testing.assert_close(
        reverse.predict(teacher, generated).anomaly_map, narrow.predict(teacher, generated).anomaly_map
    )


@pytest.mark.parametrize("mode", ["add", "multiply"])
def test_map_is_anomalib_reverse_distillation_map(mode):
    """The map is anomalib's RD map of ``(F_E, F_G)``, computed with a separable blur."""
    teacher, generated = _outlier_features()
    model = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, sigma=4, anomaly_map_mode=mode).eval()
    reference = AnomalyMapGenerator(image_size=(64, 64), sigma=4, mode=AnomalyMapGenerationMode(mode))
    output = model.predict(teacher, generated)
    torch.testing.assert_close(output.anomaly_map, reference(teacher, generated), rtol=1e-5, atol=1e-6)


def test_score_levels_leave_an_outlier_of_the_finest_level_out_of_the_score_only():
    """The outlier sits in level 0: scored on levels 1 and 2 it no longer lifts the image score."""
    teacher, generated = _outlier_features()
    kwargs = {"input_size": (64, 64), "pre_trained": False, "sigma": 4, "score_sigma": 2}
    every = FmgrdModel("resnet18", **kwargs).eval().predict(teacher, generated)
    coarse = FmgrdModel("resnet18", score_levels=(1, 2), **kwargs).eval().predict(teacher, generated)
    torch.testing.assert_close(coarse.anomaly_map, every.anomaly_map)  # the map keeps every level
    clean = [g.clone() for g in generated]
    clean[0][0, :, 3, 11] = teacher[0][0, :, 3, 11] + 0.15
    without = FmgrdModel("resnet18", **kwargs).eval().predict(teacher, clean)
    assert every.pred_score > without.pred_score + 0.1  # the outlier drives the all-level score
    reference = AnomalyMapGenerator(image_size=(64, 64), sigma=2, mode=AnomalyMapGenerationMode.ADD)  # RD map, summed
    expected = reference(teacher[1:], generated[1:]).amax()
    torch.testing.assert_close(coarse.pred_score, expected.reshape(1))
    wide = FmgrdModel("resnet18", score_levels=(1, 2), **{**kwargs, "sigma": 2, "score_sigma": 4}).eval()
    assert wide.widen is not None
    widened = wide.widen(reference(teacher[1:], generated[1:])).amax()
    torch.testing.assert_close(wide.predict(teacher, generated).pred_score, widened.reshape(1))


@pytest.mark.parametrize("levels", [(), (3,), (0, 5)])
def test_score_levels_name_the_accepted_levels(levels):
    with pytest.raises(ValueError, match=r"score_levels=.*expected some of the levels 0, 1, 2"):
        FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, score_levels=levels)


def test_score_sigma_rejects_a_width_of_zero():
    with pytest.raises(ValueError, match="score_sigma=0"):
        FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, score_sigma=0)


def test_training_masks_reach_the_generators_input_and_follow_the_generator():
    model = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False).train()
    seen: list[torch.Tensor] = []
    model.fmm[0].generator[0].register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    teacher = model.encode(torch.rand(2, 3, 64, 64))
    first, _ = model.distil(teacher, torch.Generator().manual_seed(0))
    again, _ = model.distil(teacher, torch.Generator().manual_seed(0))
    other, _ = model.distil(teacher, torch.Generator().manual_seed(1))
    masked_positions = (seen[0] == 0).all(dim=1).float().mean().item()
    assert abs(masked_positions - 0.65) < 0.1
    torch.testing.assert_close(first[0], again[0])
    assert not torch.allclose(first[0], other[0])
    model.eval()
    seen.clear()
    model.distil(teacher)
    assert (seen[0] == 0).all(dim=1).float().mean().item() < 0.01  # no masks at test time


def test_fmm_eval_mode_expectation_scales_the_generator_input():
    model = FmgrdModel("resnet18", input_size=(64, 64), pre_trained=False, fmm=FMMConfig(eval_mode="expectation"))
    model.eval()
    seen: list[torch.Tensor] = []
    model.fmm[0].generator[0].register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    teacher = model.encode(torch.rand(1, 3, 64, 64))
    model.distil(teacher)
    aligned = model.fmm[0].align(model.distil(teacher)[1][0])
    torch.testing.assert_close(seen[0], aligned * (1 - 0.65))


def test_with_every_addition_switched_off_the_bottleneck_is_anomalib_rd_ocbe():
    """Spec section 10.3: MSFF without fuse conv + no SCSAtt + OCE at width 64 == anomalib's OCBE."""
    from anomalib.models.image.reverse_distillation.components import get_bottleneck_layer

    model = FmgrdModel(
        "resnet18",
        input_size=(64, 64),
        pre_trained=False,
        bottleneck=BottleneckConfig(
            fusion_channels=0, attention=AttentionConfig(use_scconv=False, use_simam=False, pointwise=False)
        ),
        fmm=FMMConfig(enabled=False),
    ).eval()
    ocbe = get_bottleneck_layer("resnet18").eval()
    renames = {"conv1": "down1.0.0", "bn1": "down1.0.1", "conv2": "down1.1.0", "bn2": "down1.1.1"}
    renames |= {"conv3": "down2.0", "bn3": "down2.1"}
    msff_state, oce_state = {}, {}
    for key, value in ocbe.state_dict().items():
        head, _, rest = key.partition(".")
        if head in renames:
            msff_state[f"{renames[head]}.{rest}"] = value
        elif head == "bn_layer":
            oce_state[f"layers.{rest}"] = value
    model.msff.load_state_dict(msff_state, strict=True)
    model.oce.load_state_dict(oce_state, strict=True)
    ocbe_params = sum(p.numel() for name, p in ocbe.named_parameters() if not name.startswith(("conv4", "bn4")))
    assert n_params(model.msff) + n_params(model.scsatt) + n_params(model.oce) == ocbe_params
    features = [torch.randn(2, 64, 16, 16), torch.randn(2, 128, 8, 8), torch.randn(2, 256, 4, 4)]
    with torch.no_grad():
        ours = model.oce(model.scsatt(model.msff(features)))
        theirs = ocbe(features)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
