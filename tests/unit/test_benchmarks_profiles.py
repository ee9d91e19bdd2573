"""Profiles of the benchmark harness: names resolve to models, datasets and categories."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import parse_categories, parse_epochs
from benchmarks.profiles import CONFIG_DIR, PROFILES, resolve_data, resolve_model


def test_cpu_profile_gives_anomalib_builtins_the_offline_backbone_and_bounded_patchcore():
    padim = resolve_model("padim", PROFILES["cpu"])
    assert padim.class_path == "anomalib.models.Padim"
    assert padim.init_args["backbone"] == "efficientnet_lite0"
    assert padim.max_epochs == 1  # PaDiM's own single pass
    patchcore = resolve_model("Patchcore", PROFILES["cpu"])
    assert patchcore.init_args["coreset_sampling_ratio"] <= 0.01
    stfpm = resolve_model("Stfpm", PROFILES["cpu"])
    assert stfpm.max_epochs == PROFILES["cpu"].max_epochs
    assert stfpm.trainer_args == {"check_val_every_n_epoch": stfpm.max_epochs}


def test_paper_profile_keeps_anomalib_defaults():
    patchcore = resolve_model("Patchcore", PROFILES["paper"])
    assert patchcore.init_args == {}


@pytest.mark.skipif(not (CONFIG_DIR / "mldfr_cpu.yaml").is_file(), reason="MLDFR's cpu config not written yet")
def test_our_model_is_read_from_its_cpu_config():
    spec = resolve_model("MLDFR", PROFILES["cpu"])
    assert spec.ours
    assert spec.class_path == "anomalib_ext.models.MLDFR"
    assert spec.config == "configs/model/mldfr_cpu.yaml"
    assert "max_epochs" not in spec.trainer_args
    assert resolve_model("MLDFR", PROFILES["cpu"], epochs=2).max_epochs == 2


@pytest.mark.skipif(not (CONFIG_DIR / "smcc_cpu.yaml").is_file(), reason="SMCC's cpu config not written yet")
def test_a_model_gets_the_batch_size_it_needs():
    from benchmarks.runner import make_jobs

    jobs = make_jobs(["smcc", "Padim"], ["DemoTextures"], {"DemoTextures": ["brick"]}, PROFILES["cpu"])
    smcc, padim = (job.spec["data"]["init_args"]["train_batch_size"] for job in jobs)
    assert smcc == 16  # SMCC's batch must hold its memory_bank_images
    assert padim == PROFILES["cpu"].train_batch_size


def test_unknown_model_and_dataset_are_rejected_with_the_name():
    with pytest.raises(ValueError, match="nosuchmodel"):
        resolve_model("nosuchmodel", PROFILES["cpu"])
    with pytest.raises(ValueError, match="NoSuchData"):
        resolve_data("NoSuchData", "x", PROFILES["cpu"])


def test_datasets_resolve_to_anomalib_or_our_datamodules():
    demo = resolve_data("DemoTextures", "brick", PROFILES["cpu"])
    assert demo.class_path == "anomalib_ext.data.DemoTextures"
    assert demo.init_args["image_size"] == 128
    mvtec = resolve_data("MVTecAD", "bottle", PROFILES["cpu"], {"root": "/data/mvtec"})
    assert mvtec.class_path == "anomalib.data.MVTecAD"
    assert mvtec.init_args["root"] == "/data/mvtec"


def test_categories_default_to_the_demo_generator_and_parse_per_dataset():
    assert parse_categories(None, ["DemoTextures"]) == {"DemoTextures": ["brick", "grass", "gravel"]}
    assert parse_categories("brick", ["DemoTextures"]) == {"DemoTextures": ["brick"]}
    chosen = parse_categories("MVTecAD:bottle+cable;DemoTextures:grass", ["MVTecAD", "DemoTextures"])
    assert chosen == {"MVTecAD": ["bottle", "cable"], "DemoTextures": ["grass"]}
    with pytest.raises(ValueError, match="categories"):
        parse_categories(None, ["MVTecAD"])


def test_epochs_apply_to_every_model_or_per_model():
    from benchmarks.runner import make_jobs

    assert parse_epochs(None) is None
    assert parse_epochs("4") == 4
    assert parse_epochs("N2N=6, stfpm=2") == {"n2n": 6, "stfpm": 2}
    categories = {"DemoTextures": ["brick"]}
    jobs = make_jobs(["Stfpm", "Draem"], ["DemoTextures"], categories, PROFILES["cpu"], epochs={"stfpm": 2})
    assert [job.spec["max_epochs"] for job in jobs] == [2, PROFILES["cpu"].max_epochs]
