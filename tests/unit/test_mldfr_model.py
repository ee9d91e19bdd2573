"""Shape tests of MLDFR's feature fusion and torch model (spec section 3 and section 8 tables)."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_ext.models.mldfr.config import AnomalyMapConfig, FeatureConfig, RestorerConfig
from anomalib_ext.models.mldfr.feature_extractor import MultilevelFeatureExtractor
from anomalib_ext.models.mldfr.torch_model import MLDFRModel

OFFLINE = {"cnn_backbone": "efficientnet_lite0", "cnn_layers": [1, 2, 3], "vit_backbone": None}
DEEP_BRANCH = FeatureConfig(deep_branch=True)


@pytest.fixture(scope="module")
def offline_model() -> MLDFRModel:
    return MLDFRModel(
        **OFFLINE,
        input_size=(64, 64),
        pre_trained=False,
        sigma=2.0,
        features=DEEP_BRANCH,
        restorer=RestorerConfig(num_blocks=1),
    )


def test_offline_taps_are_pooled_to_the_stride_16_grid(offline_model: MLDFRModel) -> None:
    extractor = offline_model.feature_extractor
    size = 64
    grid = size // 16
    taps = list(extractor.cnn(torch.rand(1, 3, size, size)).values())
    # Lite0 blocks.1 / blocks.2 / blocks.4: 24 / 40 / 112 channels at strides 4 / 8 / 16
    assert [tuple(tap.shape[1:]) for tap in taps] == [
        (24, size // 4, size // 4),
        (40, size // 8, size // 8),
        (112, grid, grid),
    ]
    assert extractor.cnn_pool_steps == [2, 1, 0]
    f_in, f_tgt = extractor(torch.rand(2, 3, size, size))
    # 24 + 40 + 112 low-level + the deep pair upsampled x2: blocks.5.0 (192) in, blocks.6.0 (320) out
    assert extractor.num_channels == 24 + 40 + 112 + 192 == 368
    assert extractor.target_channels == 24 + 40 + 112 + 320 == 496
    assert f_in.shape == (2, 368, grid, grid)
    assert f_tgt.shape == (2, 496, grid, grid)
    assert extractor.input_features(torch.rand(2, 3, size, size)).shape == f_in.shape
    assert extractor.target_features(torch.rand(2, 3, size, size)).shape == f_tgt.shape


def test_deep_pair_spans_stages_in_order() -> None:
    # blocks.5.0 -> blocks.6.0 runs all four blocks of stage 5 and the one of stage 6
    extractor = MultilevelFeatureExtractor(
        **OFFLINE, input_size=(64, 64), pre_trained=False, config=FeatureConfig(deep_branch=True)
    )
    assert extractor.deep_input_blocks == 1
    assert len(extractor.deep_stage) == 5
    assert (extractor.deep_input_channels, extractor.deep_output_channels) == (192, 320)
    same_stage = MultilevelFeatureExtractor(
        **OFFLINE,
        input_size=(64, 64),
        pre_trained=False,
        config=FeatureConfig(deep_branch=True, deep_target_tap="blocks.5.3"),
    )
    assert len(same_stage.deep_stage) == 4
    assert same_stage.num_channels == same_stage.target_channels == 368
    with pytest.raises(ValueError, match=r"deep_target_tap='blocks.4.0'.*input first"):
        MultilevelFeatureExtractor(
            **OFFLINE,
            input_size=(64, 64),
            pre_trained=False,
            config=FeatureConfig(deep_branch=True, deep_input_tap="blocks.5.1", deep_target_tap="blocks.4.0"),
        )


def test_offline_low_level_channels_are_shared_and_deep_pair_differs(offline_model: MLDFRModel) -> None:
    f_in, f_tgt = offline_model.feature_extractor(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(f_in[:, :176], f_tgt[:, :176])
    assert f_in.shape[1] != f_tgt.shape[1]  # blocks.5.0 (192) against blocks.6.0 (320)
    same_width = MultilevelFeatureExtractor(
        **OFFLINE,
        input_size=(64, 64),
        pre_trained=False,
        config=FeatureConfig(deep_branch=True, deep_target_tap="blocks.5.3"),
    )
    f_in, f_tgt = same_width(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(f_in[:, :176], f_tgt[:, :176])
    assert not torch.allclose(f_in[:, 176:], f_tgt[:, 176:])


def test_cnn_only_variant_has_176_channels() -> None:
    extractor = MultilevelFeatureExtractor(**OFFLINE, input_size=(64, 64), pre_trained=False)
    assert extractor.num_channels == 176
    assert extractor(torch.rand(1, 3, 64, 64))[0].shape == (1, 176, 4, 4)


def test_training_forward_returns_restored_and_target_features(offline_model: MLDFRModel) -> None:
    offline_model.train()
    images, damaged = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    restored, target = offline_model(images, damaged)
    assert restored.shape == target.shape == (2, 496, 4, 4)
    assert restored.requires_grad
    assert not target.requires_grad
    with pytest.raises(ValueError, match="damaged"):
        offline_model(images)
    offline_model.eval()


def test_eval_forward_returns_map_and_score(offline_model: MLDFRModel) -> None:
    offline_model.eval()
    images = torch.rand(3, 3, 64, 64)
    output = offline_model(images)
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (3, 1, 64, 64)
    assert output.pred_score.shape == (3,)
    assert (output.anomaly_map >= 0).all()
    torch.testing.assert_close(output.pred_score, output.anomaly_map.amax(dim=(1, 2, 3)), rtol=0, atol=0)
    again = offline_model(images)  # no damage or randomness in eval
    torch.testing.assert_close(again.anomaly_map, output.anomaly_map, rtol=0, atol=0)


def test_backbone_batchnorm_stays_in_eval_mode(offline_model: MLDFRModel) -> None:
    offline_model.train()
    assert not offline_model.feature_extractor.training
    assert all(not module.training for module in offline_model.feature_extractor.modules())
    assert offline_model.restorer.training
    offline_model.eval()


def test_state_dict_holds_restorer_and_backbone_buffers_but_not_constants(offline_model: MLDFRModel) -> None:
    keys = offline_model.state_dict().keys()
    assert "restorer.pos_embed" in keys
    assert any(key.endswith("running_mean") for key in keys)  # frozen BatchNorm statistics travel too
    assert "mean" not in keys
    assert "std" not in keys


@pytest.mark.slow  # about 30 s on 2 shared cores: CaiT and a 736-wide restorer at 384 px
def test_paper_configuration_shapes_at_384() -> None:
    # ResNet-18 layer1-3 + CaiT-XS24 blocks 5/15 (random weights), one restoration block for speed.
    model = MLDFRModel(input_size=(384, 384), pre_trained=False, restorer=RestorerConfig(num_blocks=1)).eval()
    extractor = model.feature_extractor
    images = torch.rand(1, 3, 384, 384)
    taps = list(extractor.cnn(images).values())
    assert [tuple(tap.shape[1:]) for tap in taps] == [(64, 96, 96), (128, 48, 48), (256, 24, 24)]
    assert extractor.num_channels == 64 + 128 + 256 + 288 == 736
    assert extractor.grid_size == (24, 24)
    with torch.no_grad():
        cait5, cait15 = extractor._vit_features(images, [4, 14])
        assert cait5.shape == cait15.shape == (1, 288, 24, 24)
        # taps equal a manual loop over the blocks (1-based block 5 = blocks[4]), row-major tokens
        vit = extractor.vit
        tokens = vit.patch_embed(images) + vit.pos_embed
        for block in vit.blocks[:5]:
            tokens = block(tokens)
        torch.testing.assert_close(tokens.reshape(1, 24, 24, 288).permute(0, 3, 1, 2), cait5)
        output = model(images)
    assert model.restorer.pos_embed.shape == (1, 576, 736)
    assert output.anomaly_map.shape == (1, 1, 384, 384)
    assert output.pred_score.shape == (1,)


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="score_mode"):
        MLDFRModel(**OFFLINE, input_size=(64, 64), anomaly_map=AnomalyMapConfig(score_mode="median"), pre_trained=False)
    with pytest.raises(ValueError, match="cnn_backbone"):
        MLDFRModel(cnn_backbone=None, vit_backbone="cait_xs24_384", features=DEEP_BRANCH, pre_trained=False)
    with pytest.raises(ValueError, match="at least one backbone"):
        MultilevelFeatureExtractor(
            cnn_backbone=None, cnn_layers=[], vit_backbone=None, input_size=(64, 64), pre_trained=False
        )


@pytest.mark.parametrize(
    ("layers", "bad"),
    [([1, 2, 9], "9"), ([1, 2, -1], "-1"), (["blocks.1", "blocks.9"], "'blocks.9'"), ([1, 2, "layer3"], "'layer3'")],
)
def test_unknown_cnn_layer_is_named_with_the_accepted_taps(layers: list, bad: str) -> None:
    # issue 16: MLDFR(cnn_layers=[1, 2, 9]) raised a bare IndexError from inside timm, and an unknown
    # name was dropped by anomalib's extractor with only a logged warning (fewer taps than asked).
    with pytest.raises(ValueError, match=rf"cnn_layers value {bad} is not a feature tap of efficientnet_lite0") as info:
        MLDFRModel(cnn_backbone="efficientnet_lite0", cnn_layers=layers, vit_backbone=None, pre_trained=False)
    assert "3 = 'blocks.4' (stride 16)" in str(info.value)
    assert "4 = 'blocks.6' (stride 32)" in str(info.value)


def test_lightning_model_rejects_an_unknown_cnn_layer_by_value() -> None:
    from anomalib_ext.models import MLDFR

    with pytest.raises(ValueError, match=r"cnn_layers value 9 .*accepted taps are 0 = 'blocks.0'") as info:
        MLDFR(cnn_backbone="efficientnet_lite0", cnn_layers=[1, 2, 9], vit_backbone=None, pre_trained=False)
    assert "4 = 'blocks.6' (stride 32)" in str(info.value)  # the accepted range: taps 0 to 4


def test_default_backbone_rejects_an_unknown_cnn_layer_before_loading_any_weights() -> None:
    # MLDFR(cnn_layers=[1, 2, 9]) exactly as a user types it: the paper's ResNet-18 has taps 0 to 4
    from anomalib_ext.models import MLDFR

    with pytest.raises(ValueError, match=r"cnn_layers value 9 is not a feature tap of resnet18.tv_in1k") as info:
        MLDFR(cnn_layers=[1, 2, 9])
    assert "0 = 'act1' (stride 2)" in str(info.value)
    assert "4 = 'layer4' (stride 32)" in str(info.value)


def test_topk_score_averages_the_highest_fraction_of_the_smoothed_map() -> None:
    model = MLDFRModel(
        **OFFLINE,
        input_size=(64, 64),
        pre_trained=False,
        sigma=2.0,
        restorer=RestorerConfig(num_blocks=1),
        anomaly_map=AnomalyMapConfig(score_mode="topk", topk_fraction=0.01),
    ).eval()
    with torch.no_grad():
        output = model(torch.rand(2, 3, 64, 64))
    expected = output.anomaly_map.flatten(1).topk(int(0.01 * 64 * 64), dim=1).values.mean(dim=1)
    torch.testing.assert_close(output.pred_score, expected)


def test_score_against_input_compares_with_the_input_side() -> None:
    # A3: with the CNN-only fusion both sides are the same features, so the two readings agree
    kwargs = {**OFFLINE, "input_size": (64, 64), "pre_trained": False, "restorer": RestorerConfig(num_blocks=1)}
    torch.manual_seed(0)
    target = MLDFRModel(**kwargs).eval()
    torch.manual_seed(0)
    inputs = MLDFRModel(**kwargs, anomaly_map=AnomalyMapConfig(score_against="input")).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(images).anomaly_map, inputs(images).anomaly_map)


def test_score_against_input_needs_a_pair_of_equal_widths() -> None:
    kwargs = {**OFFLINE, "input_size": (64, 64), "pre_trained": False, "features": DEEP_BRANCH}
    with pytest.raises(ValueError, match=r"score_against='input'.*496 channels.*368 channels"):
        MLDFRModel(**kwargs, anomaly_map=AnomalyMapConfig(score_against="input"))
    same_width = FeatureConfig(deep_branch=True, deep_target_tap="blocks.5.3")
    MLDFRModel(**{**kwargs, "features": same_width}, anomaly_map=AnomalyMapConfig(score_against="input"))


@pytest.mark.parametrize("layers", [[3, 1, 2], [1, 1, 3]])
def test_cnn_layers_must_go_from_shallow_to_deep(layers: list) -> None:
    with pytest.raises(ValueError, match="from shallow to deep"):
        MLDFRModel(cnn_backbone="efficientnet_lite0", cnn_layers=layers, vit_backbone=None, pre_trained=False)
