"""anomalib's own models get backbone weights from the offline resolver, only when asked."""

from __future__ import annotations

import importlib

import pytest
import torch
from anomalib.models import Padim
from anomalib.models.components import TimmFeatureExtractor

from anomalib_ext.backbones import (
    OFFLINE_ANOMALIB_ENV,
    AnomalibFeatureExtractor,
    disable_offline_anomalib_backbones,
    enable_offline_anomalib_backbones,
    offline_anomalib_backbones,
    offline_anomalib_backbones_from_env,
    packaged_state_dict,
)

PADIM_MODULE = importlib.import_module("anomalib.models.image.padim.torch_model")
LITE0 = {"backbone": "efficientnet_lite0", "layers": ["blocks.1", "blocks.2"], "n_features": 16}


@pytest.fixture(autouse=True)
def _anomalib_restored():
    yield
    disable_offline_anomalib_backbones()
    assert PADIM_MODULE.TimmFeatureExtractor is TimmFeatureExtractor


def extractor(model: Padim) -> torch.nn.Module:
    return model.model.feature_extractor


def test_padim_gets_the_packaged_lite0_weights_inside_the_block() -> None:
    with offline_anomalib_backbones() as rebound:
        model = Padim(**LITE0)  # pre_trained=True: timm would download; HF_HUB_OFFLINE=1 forbids it
    assert "anomalib.models.image.padim.torch_model" in rebound
    assert type(extractor(model)) is AnomalibFeatureExtractor
    packaged = packaged_state_dict("efficientnet_lite0")
    network = extractor(model).feature_extractor
    torch.testing.assert_close(network.conv_stem.weight, packaged["conv_stem.weight"])
    torch.testing.assert_close(network.blocks[2][0].conv_pw.weight, packaged["blocks.2.0.conv_pw.weight"])


def test_outside_the_block_anomalib_builds_its_own_extractor() -> None:
    with offline_anomalib_backbones():
        pass
    assert PADIM_MODULE.TimmFeatureExtractor is TimmFeatureExtractor
    assert type(extractor(Padim(**LITE0, pre_trained=False))) is TimmFeatureExtractor


def test_checkpoint_keys_are_anomalibs_unless_truncated() -> None:
    keys = set(Padim(**LITE0, pre_trained=False).state_dict())
    with offline_anomalib_backbones():
        offline = set(Padim(**LITE0).state_dict())
    with offline_anomalib_backbones(truncate=True):
        truncated = set(Padim(**LITE0).state_dict())
    assert offline == keys
    assert truncated < keys
    assert not [key for key in truncated if ".blocks.3." in key]  # blocks after the deepest tap (blocks.2)


def test_enable_is_idempotent_and_a_nested_block_leaves_it_enabled() -> None:
    assert enable_offline_anomalib_backbones()
    assert enable_offline_anomalib_backbones() == []
    with offline_anomalib_backbones() as rebound:
        assert rebound == []
    assert PADIM_MODULE.TimmFeatureExtractor is AnomalibFeatureExtractor
    disable_offline_anomalib_backbones()
    assert PADIM_MODULE.TimmFeatureExtractor is TimmFeatureExtractor


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_environment_variable_enables(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(OFFLINE_ANOMALIB_ENV, value)
    assert offline_anomalib_backbones_from_env() is True
    assert PADIM_MODULE.TimmFeatureExtractor is AnomalibFeatureExtractor


@pytest.mark.parametrize("value", [None, "", "0", "false", "Off", "no"])
def test_environment_variable_unset_or_off_changes_nothing(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(OFFLINE_ANOMALIB_ENV, raising=False)
    else:
        monkeypatch.setenv(OFFLINE_ANOMALIB_ENV, value)
    assert offline_anomalib_backbones_from_env() is False
    assert PADIM_MODULE.TimmFeatureExtractor is TimmFeatureExtractor


def test_environment_variable_with_another_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OFFLINE_ANOMALIB_ENV, "offline")
    expected = r"ANOMALIB_EXT_OFFLINE_BACKBONES='offline' is invalid: expected one of 1, true"
    with pytest.raises(ValueError, match=expected):
        offline_anomalib_backbones_from_env()
    assert PADIM_MODULE.TimmFeatureExtractor is TimmFeatureExtractor


def test_registration_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import anomalib_ext

    monkeypatch.setenv(OFFLINE_ANOMALIB_ENV, "1")
    anomalib_ext.register()
    assert PADIM_MODULE.TimmFeatureExtractor is AnomalibFeatureExtractor
