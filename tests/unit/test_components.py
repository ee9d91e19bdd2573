"""Shared model components: scoring, the mixin of shared concerns, parameter groups."""

import inspect
from dataclasses import asdict, dataclass, is_dataclass

import pytest
import torch
from anomalib.models.components import AnomalibModule, GaussianBlur2d
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import seed_everything
from torch import nn
from torchvision.transforms.v2 import Resize

from anomalib_ext.models.components import as_config
from anomalib_ext.models.components.base import AnomalibExtModule
from anomalib_ext.models.components.scoring import AnomalyScorer, GaussianBlur, ScoreMode, image_score
from anomalib_ext.post_processing import OrderPreservingPostProcessor
from anomalib_ext.registry import registered_models
from tests.helpers.tiny import TINY, build


def test_image_score_modes_by_value() -> None:
    anomaly_map = torch.zeros(2, 1, 10, 10)
    anomaly_map[0, 0, 0, :3] = torch.tensor([9.0, 6.0, 3.0])
    anomaly_map[1] = 1.0
    assert image_score(anomaly_map, "max").tolist() == [9.0, 1.0]
    assert image_score(anomaly_map, "mean").tolist() == pytest.approx([0.18, 1.0])
    # top 2% of 100 pixels = the two highest values
    assert image_score(anomaly_map, ScoreMode.TOPK, 0.02).tolist() == [7.5, 1.0]


def test_scorer_smooths_with_anomalibs_gaussian_and_scores_the_smoothed_map() -> None:
    anomaly_map = torch.zeros(1, 1, 33, 33)
    anomaly_map[0, 0, 16, 16] = 1.0
    output = AnomalyScorer(sigma=2)(anomaly_map)
    assert output.anomaly_map.shape == (1, 1, 33, 33)
    assert output.anomaly_map.sum().item() == pytest.approx(1.0, abs=1e-4)  # normalised kernel, inside the map
    assert output.pred_score.shape == (1,)
    assert output.pred_score.item() == pytest.approx(1 / (2 * torch.pi * 4), rel=0.02)  # peak of a 2-D Gaussian
    assert AnomalyScorer(sigma=0)(anomaly_map).pred_score.item() == 1.0


@pytest.mark.parametrize(("sigma", "channels"), [(1.0, 1), (4.0, 1), (8.0, 2)])
def test_separable_blur_equals_anomalibs_2d_blur_up_to_the_border(sigma: float, channels: int) -> None:
    maps = torch.rand(2, channels, 70, 90, generator=torch.Generator().manual_seed(0))
    expected = GaussianBlur2d(sigma=sigma, channels=channels)(maps)
    torch.testing.assert_close(GaussianBlur(sigma, channels)(maps), expected, rtol=1e-5, atol=1e-6)


def test_separable_blur_loads_a_checkpoint_that_holds_anomalibs_2d_kernel() -> None:
    """Models saved while the scorer used anomalib's ``GaussianBlur2d`` (a persistent ``k x k`` kernel) still load."""
    old = nn.Sequential(GaussianBlur2d(sigma=4.0, channels=1))
    new = nn.Sequential(GaussianBlur(4.0))
    assert "0.kernel" in old.state_dict()
    assert "0.kernel" not in new.state_dict()
    new.load_state_dict(old.state_dict())  # strict: the stale 2-D kernel is dropped, not reported
    with pytest.raises(ValueError, match="sigma=0"):
        GaussianBlur(0)


@pytest.mark.parametrize(("kwargs", "named"), [({"sigma": -1}, "sigma"), ({"topk_fraction": 0}, "topk_fraction")])
def test_scorer_rejects_bad_values_by_name(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        AnomalyScorer(**kwargs)


def test_scorer_keeps_the_map_orientation() -> None:
    """An off-diagonal outlier stays where it is (row 2, column 11): a transposed map would move it."""
    anomaly_map = torch.zeros(1, 1, 16, 16)
    anomaly_map[0, 0, 2, 11] = 1.0
    smoothed = AnomalyScorer(sigma=1.0)(anomaly_map).anomaly_map
    assert divmod(int(smoothed.flatten().argmax()), 16) == (2, 11)


def test_bad_score_mode_lists_the_accepted_values() -> None:
    with pytest.raises(ValueError, match="'maximum' is not a valid ScoreMode"):
        AnomalyScorer(score_mode="maximum")


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 1, 1)


class Tiny(AnomalibExtModule, AnomalibModule):
    frozen_modules = ("encoder",)

    def __init__(self) -> None:
        super().__init__()
        self.model = TinyModel()

    @property
    def trainer_arguments(self) -> dict:
        return {}

    @property
    def learning_type(self) -> str:
        return "one_class"


def test_mixin_keeps_anomalib_module_a_direct_base_and_sets_the_shared_components() -> None:
    model = Tiny()
    assert AnomalibModule in Tiny.__bases__
    assert isinstance(model.post_processor, OrderPreservingPostProcessor)
    names = {metric.name for metric in model.evaluator.test_metrics}
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"} <= names


def test_frozen_modules_are_frozen_at_fit_start_and_back_in_eval_every_epoch_and_batch() -> None:
    model = Tiny()
    model.on_fit_start()
    assert not any(p.requires_grad for p in model.model.encoder.parameters())
    assert all(p.requires_grad for p in model.model.head.parameters())
    model.train()  # what Lightning's mode restoring amounts to
    model.on_train_epoch_start()
    assert not model.model.encoder.training
    assert model.model.head.training
    model.model.encoder.train()
    model.on_train_batch_start(None, 0)
    assert not model.model.encoder[1].training


def test_generator_follows_seed_everything_and_differs_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = []
    for rank in (0, 0, 1):
        seed_everything(7)
        model = Tiny()
        monkeypatch.setattr(Tiny, "global_rank", property(lambda _self, r=rank: r))
        model.on_fit_start()
        draws.append(torch.rand(3, generator=model.generator))
        model.on_fit_end()
        assert model.generator is None
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_fixed_input_size_comes_from_the_pre_processor_and_names_the_model_without_one() -> None:
    model = Tiny()
    model.pre_processor = PreProcessor(transform=Resize((48, 32)))
    assert model.fixed_input_size("why") == (48, 32)
    model.pre_processor = PreProcessor(transform=None)
    with pytest.raises(ValueError, match=r"Tiny needs a fixed input size \(its buffers\): pass a pre-processor"):
        model.fixed_input_size("its buffers")


class _Images(torch.utils.data.Dataset):
    """Eight validation images as anomalib's batches expose them (``batch["image"]``)."""

    collate_fn = staticmethod(torch.utils.data.default_collate)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.full((3, 8, 8), float(index))}


class _Calibration:
    """The parts of a datamodule the INT8 quantiser reads; evaluation batches of 4."""

    val_data = _Images()
    eval_batch_size = 4
    num_workers = 0
    external_collate_fn = None

    def setup(self, stage: str) -> None:
        pass

    def val_dataloader(self) -> torch.utils.data.DataLoader:  # what anomalib's quantiser calibrates on
        return torch.utils.data.DataLoader(self.val_data, batch_size=self.eval_batch_size)


def _quantise(monkeypatch: pytest.MonkeyPatch, batch: int) -> tuple[list[tuple[int, ...]], dict[str, object]]:
    """Run the package's INT8 quantiser on a 1 x 1 convolution, ``nncf.quantize`` replaced by a recorder.

    Returns the shapes of the calibration items and the keyword arguments ``nncf.quantize`` was given.
    """
    import nncf
    import openvino as ov

    model = ov.convert_model(nn.Conv2d(3, 1, 1), example_input=torch.rand(1, 3, 8, 8), input=[(batch, 3, 8, 8)])
    shapes: list[tuple[int, ...]] = []
    options: dict[str, object] = {}

    def quantize(model: ov.Model, dataset: nncf.Dataset, **kwargs: object) -> ov.Model:
        shapes.extend(tuple(item.shape) for item in dataset.get_inference_data())
        options.update(kwargs)
        return model

    monkeypatch.setattr(nncf, "quantize", quantize)
    AnomalibExtModule._post_training_quantization_ov(model, _Calibration())
    return shapes, options


@pytest.mark.parametrize(("batch", "expected"), [(-1, 1), (2, 2)])
def test_int8_calibration_feeds_one_image_at_a_time_or_the_static_batch(
    monkeypatch: pytest.MonkeyPatch, batch: int, expected: int
) -> None:
    """Batched calibration gave NNCF per-batch-item statistics on axes that are no longer images (SMCC: INT8
    image AUROC 0.500 in batches of 8, 0.860 image by image, f32 0.940)."""
    shapes, _ = _quantise(monkeypatch, batch)
    assert shapes == [(expected, 3, 8, 8)] * (8 // expected)


def test_int8_weights_are_7_bit_in_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """8-bit weights overflow on CPUs without VNNI: SMCC's INT8 image AUROC 0.839 there, 0.931 with 7 bits."""
    from nncf.quantization.advanced_parameters import OverflowFix

    _, options = _quantise(monkeypatch, 1)
    assert options["advanced_parameters"].overflow_fix == OverflowFix.ENABLE


@dataclass(frozen=True)
class Group:
    size: tuple[int, int] = (1, 1)
    name: str = "a"


@dataclass(frozen=True)
class Outer:
    inner: Group = Group()


def test_as_config_converts_mappings_lists_and_none_and_names_what_it_rejects() -> None:
    assert as_config(Group, {"size": [2, 3]}) == Group(size=(2, 3))
    assert as_config(Outer, {"inner": {"size": [4, 5]}}) == Outer(inner=Group(size=(4, 5)))
    assert as_config(Group, None) == Group()
    group = Group(name="b")
    assert as_config(Group, group) is group
    with pytest.raises(TypeError, match=r"Group has no field colour: accepted fields are \['size', 'name'\]"):
        as_config(Group, {"colour": 1})
    with pytest.raises(TypeError, match="Expected a Group or a mapping of its fields, got 3"):
        as_config(Group, 3)


@pytest.mark.parametrize("name", sorted(registered_models()))
def test_every_model_takes_its_parameter_groups_as_plain_mappings(name: str) -> None:
    """``get_model`` with a dict of ``init_args`` or a JSON file gives mappings; the model keeps the groups."""
    parameters = inspect.signature(registered_models()[name].__init__).parameters.values()
    groups = {item.name: item.default for item in parameters if is_dataclass(item.default)}
    assert groups, f"{name} has no parameter groups"
    mappings = {key: asdict(value) for key, value in groups.items() if key not in TINY[name]["init_args"]}
    model = build(name, **mappings)
    for key, default in groups.items():
        assert type(model.hparams[key]) is type(default), key


class _ConvThenDistances(nn.Module):
    """A backbone (two convolutions) and a head that compares its features (pooling, distances)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.register_buffer("bank", torch.randn(8, 5, generator=torch.Generator().manual_seed(0)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = nn.functional.avg_pool2d(self.backbone(images), 3, 1, 1).flatten(2).transpose(1, 2)
        return (features @ self.bank).amin(-1)


class _ConvolutionsOnly(AnomalibExtModule):
    int8_quantised_types = ("Convolution",)


@pytest.mark.parametrize(
    ("module", "expected"),
    [(AnomalibExtModule, {"Convolution", "AvgPool"}), (_ConvolutionsOnly, {"Convolution"})],
)
def test_int8_quantises_only_the_types_a_model_names(module: type, expected: set[str]) -> None:
    """``int8_quantised_types`` keeps every other operation in float: tapped features quantised where they
    enter SMCC's fusion cost INT8 image AUROC 0.834 on ELPV mono; convolutions and MatMul only, 0.933 (f32 0.948).
    """
    import openvino as ov

    model = ov.convert_model(_ConvThenDistances().eval(), example_input=torch.rand(1, 3, 8, 8), input=[(1, 3, 8, 8)])
    quantised = module._post_training_quantization_ov(model, _Calibration())
    fed = {
        target.get_node().get_type_name()
        for node in quantised.get_ordered_ops()
        if node.get_type_name() == "FakeQuantize"
        for target in node.output(0).get_target_inputs()
    }
    assert fed == expected


class _ConvThenBlur(nn.Module):
    """A network convolution, then a map smoothed by the separable blur (a ``1 x k`` and a ``k x 1`` pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.blur = GaussianBlur(2.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blur(self.conv(images))


def test_int8_keeps_both_passes_of_the_separable_blur_in_float() -> None:
    """With only the last pass in float, FMGRD's INT8 map was off by 0.42 of its range (limit 0.25)."""
    import openvino as ov

    from anomalib_ext.models.components.base import float_outputs

    model = ov.convert_model(_ConvThenBlur().eval(), example_input=torch.rand(1, 1, 32, 32), input=[(1, 1, 32, 32)])
    kernels = {
        node.get_friendly_name(): tuple(node.input(1).get_partial_shape().to_shape())[-2:]
        for node in model.get_ordered_ops()
        if node.get_type_name() == "Convolution"
    }
    kept = {name: kernels[name] for name in float_outputs(model).names if name in kernels}
    # both passes of the sigma-2 blur (k = 17), not the 3 x 3 network convolution
    assert sorted(kept.values()) == [(1, 17), (17, 1)]
