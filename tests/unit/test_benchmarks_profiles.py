"""Profiles of the benchmark harness: names resolve to models, datasets, categories and schedules."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.__main__ import (
    DEFAULT_TIMEOUT_S,
    check_curve_runs,
    check_model_names,
    curve_timeout_warning,
    main,
    parse_categories,
    parse_int8_types,
    parse_model_args,
    parse_per_model,
    parse_seeds,
    parse_steps,
)
from benchmarks.profiles import (
    CONFIG_DIR,
    PACKAGE_DIR,
    PROFILES,
    SHARED_FILES,
    default_categories,
    fingerprint_files,
    our_models,
    resolve_data,
    resolve_model,
    schedule,
)
from benchmarks.runner import make_jobs


def test_cpu_profile_gives_anomalib_builtins_the_offline_backbone_at_256_px():
    cpu = PROFILES["cpu"]
    assert cpu.image_size == 256
    assert cpu.demo_image_size == 256
    assert cpu.max_train_images is None  # no hidden cap: --max-train-images sets one
    padim = resolve_model("padim", cpu)
    assert padim.class_path == "anomalib.models.Padim"
    assert padim.init_args["backbone"] == "efficientnet_lite0"
    assert (padim.max_epochs, padim.max_steps) == (1, None)  # PaDiM's own single pass, whatever is asked
    assert resolve_model("Padim", cpu, epochs=5).max_epochs == 1


def test_cpu_profile_bounds_patchcores_coreset():
    cpu = PROFILES["cpu"]
    patchcore = resolve_model("Patchcore", cpu)
    assert patchcore.init_args["coreset_sampling_ratio"] * cpu.coreset_max_patches <= 5_000
    assert (patchcore.max_epochs, patchcore.max_steps) == (1, None)


def test_trained_builtins_take_the_schedule_given_without_a_hidden_cap():
    cpu = PROFILES["cpu"]
    assert resolve_model("Stfpm", cpu).max_epochs == cpu.default_epochs
    assert resolve_model("Stfpm", cpu, epochs=40).max_epochs == 40
    stfpm = resolve_model("Stfpm", cpu, steps=500)
    assert (stfpm.max_epochs, stfpm.max_steps) == (-1, 500)
    assert stfpm.trainer_args == {}


def test_paper_profile_keeps_anomalib_defaults():
    patchcore = resolve_model("Patchcore", PROFILES["paper"])
    assert patchcore.init_args == {}
    assert PROFILES["paper"].coreset_max_patches is None


def test_schedule_command_line_replaces_the_config_schedule():
    assert schedule(10, None, None, None, 3) == (10, None)
    assert schedule(None, 300, None, None, 3) == (-1, 300)
    assert schedule(None, None, None, None, 3) == (3, None)
    assert schedule(10, None, None, 200, 3) == (-1, 200)
    assert schedule(None, 300, 4, None, 3) == (4, None)
    assert schedule(10, None, 4, 200, 3) == (4, 200)


def test_our_models_come_from_the_registry():
    from anomalib_ext.registry import registered_models

    assert our_models() == {name.lower(): name for name in registered_models()}


@pytest.mark.skipif(not (CONFIG_DIR / "mldfr_cpu.yaml").is_file(), reason="MLDFR's cpu config not written yet")
def test_our_model_is_read_from_its_cpu_config_with_its_schedule():
    spec = resolve_model("MLDFR", PROFILES["cpu"])
    assert spec.ours
    assert spec.class_path == "anomalib_ext.models.MLDFR"
    assert spec.config == "configs/model/mldfr_cpu.yaml"
    assert "max_epochs" not in spec.trainer_args
    assert "max_steps" not in spec.trainer_args
    assert spec.max_epochs is not None or spec.max_steps is not None
    assert resolve_model("mldfr", PROFILES["cpu"], epochs=2).max_epochs == 2
    assert (resolve_model("mldfr", PROFILES["cpu"], steps=300).max_steps, spec.section["class_path"]) == (
        300,
        "anomalib_ext.models.MLDFR",
    )


@pytest.mark.skipif(not (CONFIG_DIR / "smcc_cpu.yaml").is_file(), reason="SMCC's cpu config not written yet")
def test_a_model_gets_the_batch_size_it_needs():
    jobs = make_jobs(["smcc", "Padim"], ["DemoTextures"], {"DemoTextures": ["brick"]}, PROFILES["cpu"])
    smcc, padim = (job.spec["data"]["init_args"]["train_batch_size"] for job in jobs)
    assert smcc == 16  # the paper's batch, pinned by SMCC's config
    assert padim == PROFILES["cpu"].train_batch_size


def test_unknown_model_and_dataset_are_rejected_with_the_name():
    with pytest.raises(ValueError, match="nosuchmodel"):
        resolve_model("nosuchmodel", PROFILES["cpu"])
    with pytest.raises(ValueError, match="NoSuchData"):
        resolve_data("NoSuchData", "x", PROFILES["cpu"])


def test_datasets_resolve_to_anomalib_or_our_datamodules():
    demo = resolve_data("DemoTextures", "brick", PROFILES["cpu"])
    assert demo.class_path == "anomalib_ext.data.DemoTextures"
    assert demo.init_args["image_size"] == 256
    assert demo.init_args["root"] == "./datasets/demo_textures_256"
    assert resolve_data("ELPV", "poly", PROFILES["cpu"]).class_path == "anomalib_ext.data.ELPV"
    mvtec = resolve_data("MVTecAD", "bottle", PROFILES["cpu"], {"root": "/data/mvtec"})
    assert mvtec.class_path == "anomalib.data.MVTecAD"
    assert mvtec.init_args["root"] == "/data/mvtec"


def test_categories_default_to_the_datamodules_own_and_parse_per_dataset():
    assert parse_categories(None, ["DemoTextures"]) == {"DemoTextures": ["brick", "grass", "gravel"]}
    assert default_categories("ELPV") == ["mono", "poly"]
    assert parse_categories("brick", ["DemoTextures"]) == {"DemoTextures": ["brick"]}
    chosen = parse_categories("MVTecAD:bottle+cable;DemoTextures:grass", ["MVTecAD", "DemoTextures"])
    assert chosen == {"MVTecAD": ["bottle", "cable"], "DemoTextures": ["grass"]}
    with pytest.raises(ValueError, match="categories"):
        parse_categories(None, ["MVTecAD"])


def test_schedules_apply_to_every_model_or_per_model():
    assert parse_per_model(None) is None
    assert parse_per_model("4") == 4
    assert parse_per_model("N2N=6, stfpm=2") == {"n2n": 6, "stfpm": 2}
    categories = {"DemoTextures": ["brick"]}
    jobs = make_jobs(["Stfpm", "Draem"], ["DemoTextures"], categories, PROFILES["cpu"], epochs={"stfpm": 2})
    assert [job.spec["max_epochs"] for job in jobs] == [2, PROFILES["cpu"].default_epochs]
    jobs = make_jobs(["Stfpm", "Padim"], ["DemoTextures"], categories, PROFILES["cpu"], steps={"stfpm": 50})
    assert [(job.spec["max_epochs"], job.spec["max_steps"]) for job in jobs] == [(-1, 50), (1, None)]


def test_curve_runs_are_one_max_steps_job_per_count_beside_references_run_once():
    categories = {"ELPV": ["mono"]}
    jobs = make_jobs(
        ["rbae", "Padim", "Stfpm"], ["ELPV"], categories, PROFILES["cpu"], epochs={"stfpm": 10}, curve_runs=[400, 200]
    )
    assert [(job.model, job.curve_run_steps) for job in jobs] == [
        ("RBAE", 200),
        ("RBAE", 400),
        ("Padim", None),  # fixed to one epoch: a reference line
        ("Stfpm", None),  # its own schedule: a reference line
    ]
    assert jobs[0].key.endswith("__RBAE__s0__n200")
    assert jobs[2].key.endswith("__Padim__s0")
    assert jobs[3].spec["max_epochs"] == 10
    # each point is exactly the job of --max-steps COUNT: a record of that run answers it
    for job in jobs[:2]:
        (alone,) = make_jobs(["rbae"], ["ELPV"], categories, PROFILES["cpu"], steps={"rbae": job.curve_run_steps})
        assert (job.spec["max_epochs"], job.spec["max_steps"]) == (-1, job.curve_run_steps)
        assert job.settings == alone.settings
    with pytest.raises(ValueError, match=r"curve_steps.*curve_runs"):
        make_jobs(["rbae"], ["ELPV"], categories, PROFILES["cpu"], curve_steps=[10], curve_runs=[20])


def test_curve_runs_refuse_a_curve_in_one_run_and_one_schedule_for_every_model():
    check_curve_runs([200, 400], None, {"stfpm": 10}, None)
    check_curve_runs(None, [10], 3, 4)
    with pytest.raises(argparse.ArgumentTypeError, match="--curve-runs and --curve-steps"):
        check_curve_runs([200], [10], None, None)
    with pytest.raises(argparse.ArgumentTypeError, match="--max-steps 300 for every model"):
        check_curve_runs([200], None, None, 300)
    with pytest.raises(argparse.ArgumentTypeError, match="--curve-runs expects comma-separated positive integers"):
        parse_steps("200,-1", "--curve-runs")


def test_bad_schedules_steps_and_names_fail_with_the_option_and_value():
    with pytest.raises(argparse.ArgumentTypeError, match=r"--max-steps expects positive integers, got 'x' for mldfr"):
        parse_per_model("mldfr=x", "--max-steps")
    with pytest.raises(argparse.ArgumentTypeError, match="--max-epochs expects N or name=N"):
        parse_per_model("mldfr=3,stfpm", "--max-epochs")
    with pytest.raises(argparse.ArgumentTypeError, match="--curve-steps"):
        parse_steps("50,0")
    assert parse_steps("400,50,100,50") == [50, 100, 400]
    with pytest.raises(argparse.ArgumentTypeError, match=r"--max-steps names fmgrd, which is not in --models"):
        check_model_names({"--max-steps": {"fmgrd": 3}}, ["Padim", "mldfr"])
    check_model_names({"--max-steps": {"mldfr": 3, "padim": 2}}, ["Padim", "MLDFR"])


def test_model_args_change_init_arguments_of_the_named_model_only():
    pairs = ["SMCC:lr=0.0", "smcc:scoring.num_neighbors=1", "smcc:training.weight_decay=0.0"]
    pairs += ["smcc:layers=[blocks.1, blocks.4]"]
    model_args = parse_model_args([*pairs, "Patchcore:num_neighbors=1"], ["smcc", "Patchcore", "Padim"])
    assert model_args == {
        "smcc": {
            "lr": 0.0,
            "scoring.num_neighbors": 1,
            "training.weight_decay": 0.0,
            "layers": ["blocks.1", "blocks.4"],
        },
        "patchcore": {"num_neighbors": 1},
    }
    categories = {"DemoTextures": ["brick"]}
    plain = make_jobs(["smcc", "Patchcore", "Padim"], ["DemoTextures"], categories, PROFILES["cpu"])
    changed = make_jobs(
        ["smcc", "Patchcore", "Padim"], ["DemoTextures"], categories, PROFILES["cpu"], model_args=model_args
    )
    smcc = changed[0].spec["model"]["init_args"]
    assert smcc["lr"] == 0.0
    assert smcc["layers"] == ["blocks.1", "blocks.4"]
    # a group the config already sets keeps its other keys; one it does not set is created
    assert smcc["features"] == plain[0].spec["model"]["init_args"]["features"]
    assert smcc["scoring"] == {**plain[0].spec["model"]["init_args"].get("scoring", {}), "num_neighbors": 1}
    assert smcc["training"] == {"weight_decay": 0.0}
    assert changed[1].spec["model"]["init_args"]["num_neighbors"] == 1
    assert changed[1].spec["model"]["init_args"]["backbone"] == "efficientnet_lite0"
    # a changed model runs again, the others keep their stored records
    assert [a.settings != b.settings for a, b in zip(plain, changed, strict=True)] == [True, True, False]
    assert "num_neighbors" not in resolve_model("smcc", PROFILES["cpu"]).init_args.get("scoring", {})  # unchanged


def test_bad_model_args_name_the_pair_and_what_was_expected():
    with pytest.raises(argparse.ArgumentTypeError, match=r"expects model:key=value .* got 'smcc:lr'"):
        parse_model_args(["smcc:lr"], ["smcc"])
    with pytest.raises(argparse.ArgumentTypeError, match=r"got 'lr=0.1'"):
        parse_model_args(["lr=0.1"], ["smcc"])
    with pytest.raises(argparse.ArgumentTypeError, match=r"names fmgrd, which is not in --models \(smcc\)"):
        parse_model_args(["fmgrd:lr=0.1"], ["smcc"])
    with pytest.raises(ValueError, match=r"'lr.value' of SMCC: lr is 0.0001, not a group of arguments"):
        resolve_model("smcc", PROFILES["cpu"], init_changes={"lr.value": 1})


def test_int8_types_reach_the_named_models_jobs_only():
    types = parse_int8_types("SMCC=Convolution+GroupConvolution, mldfr=all", ["smcc", "mldfr", "Padim"], int8=True)
    assert types == {"smcc": ["Convolution", "GroupConvolution"], "mldfr": None}
    categories = {"DemoTextures": ["brick"]}
    plain = make_jobs(["smcc", "mldfr", "Padim"], ["DemoTextures"], categories, PROFILES["cpu"], int8=True)
    changed = make_jobs(
        ["smcc", "mldfr", "Padim"], ["DemoTextures"], categories, PROFILES["cpu"], int8=True, int8_types=types
    )
    assert changed[0].spec["int8_types"] == ["Convolution", "GroupConvolution"]
    assert changed[1].spec["int8_types"] is None
    assert "int8_types" not in changed[2].spec
    assert [a.settings != b.settings for a, b in zip(plain, changed, strict=True)] == [True, True, False]
    assert parse_int8_types(None, ["smcc"], int8=False) is None
    # nothing is exported without OpenVINO: the types must not make those jobs differ (and run again)
    no_export = {"int8": True, "openvino": False}
    assert [
        job.settings for job in make_jobs(["smcc"], ["DemoTextures"], categories, PROFILES["cpu"], **no_export)
    ] == [
        job.settings
        for job in make_jobs(["smcc"], ["DemoTextures"], categories, PROFILES["cpu"], int8_types=types, **no_export)
    ]


def test_bad_int8_types_name_the_value_and_what_was_expected():
    with pytest.raises(argparse.ArgumentTypeError, match=r"add --int8"):
        parse_int8_types("smcc=all", ["smcc"], int8=False)
    with pytest.raises(argparse.ArgumentTypeError, match=r"expects name=Type\+Type or name=all, got 'smcc'"):
        parse_int8_types("smcc", ["smcc"], int8=True)
    with pytest.raises(argparse.ArgumentTypeError, match=r"names 'padim': only this package's models"):
        parse_int8_types("Padim=MatMul", ["Padim"], int8=True)
    with pytest.raises(argparse.ArgumentTypeError, match=r"Conv for smcc is not .* \(one of Convolution, "):
        parse_int8_types("smcc=Conv+MatMul", ["smcc"], int8=True)
    with pytest.raises(argparse.ArgumentTypeError, match=r"names fmgrd, which is not in --models \(smcc\)"):
        parse_int8_types("fmgrd=all", ["smcc"], int8=True)


class _StopError(Exception):
    """Stops main() once the jobs would be made."""


def test_the_command_line_hands_model_args_to_the_jobs(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys):
    seen: dict = {}

    def make_jobs_spy(*args, **kwargs):
        seen.update(kwargs)
        raise _StopError

    monkeypatch.setattr("benchmarks.runner.make_jobs", make_jobs_spy)
    with pytest.raises(_StopError):
        main(["--models", "smcc,Padim", "--model-arg", "smcc:lr=0.0", "--output", str(tmp_path)])
    assert seen["model_args"] == {"smcc": {"lr": 0.0}}
    with pytest.raises(SystemExit) as exit_info:
        main(["--models", "smcc", "--model-arg", "fmgrd:lr=0.0", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "names fmgrd, which is not in --models (smcc)" in capsys.readouterr().err


def test_seeds_give_one_job_each_with_the_seed_in_key_and_settings():
    assert parse_seeds("0,1,2", 7) == [0, 1, 2]
    assert parse_seeds(None, 7) == [7]
    per_dataset = parse_seeds("DemoTextures:0+1+2", 7, ["DemoTextures", "ELPV"])
    assert per_dataset == {"DemoTextures": [0, 1, 2], "ELPV": [7]}
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds names dataset 'MVTec'"):
        parse_seeds("MVTec:0", 0, ["DemoTextures"])
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds expects integers"):
        parse_seeds("0,a", 0, ["DemoTextures"])
    categories = {"DemoTextures": ["brick"], "ELPV": ["mono"]}
    jobs = make_jobs(["Padim"], ["DemoTextures", "ELPV"], categories, PROFILES["cpu"], seeds=per_dataset)
    assert [(job.dataset, job.seed) for job in jobs] == [("DemoTextures", s) for s in (0, 1, 2)] + [("ELPV", 7)]
    jobs = make_jobs(["Padim"], ["DemoTextures"], {"DemoTextures": ["brick"]}, PROFILES["cpu"], seeds=[0, 1, 2])
    assert [job.seed for job in jobs] == [0, 1, 2]
    assert [job.spec["seed"] for job in jobs] == [0, 1, 2]
    assert [job.key for job in jobs] == [f"cpu__DemoTextures__brick__Padim__s{seed}" for seed in (0, 1, 2)]
    assert len({job.settings for job in jobs}) == 3


def test_curve_mode_trains_every_model_for_the_last_step():
    jobs = make_jobs(
        ["Stfpm"], ["DemoTextures"], {"DemoTextures": ["brick"]}, PROFILES["cpu"], curve_steps=[100, 50, 400]
    )
    assert (jobs[0].spec["max_epochs"], jobs[0].spec["max_steps"]) == (-1, 400)
    assert jobs[0].spec["curve_steps"] == [50, 100, 400]


def test_a_curve_under_the_default_timeout_is_warned_about() -> None:
    warning = curve_timeout_warning([100, 800], DEFAULT_TIMEOUT_S)
    assert warning is not None
    assert "800 steps" in warning
    assert "--timeout" in warning
    assert curve_timeout_warning([100, 800], 7200) is None  # the user chose a timeout
    assert curve_timeout_warning(None, DEFAULT_TIMEOUT_S) is None  # no curve


def test_a_models_fingerprint_covers_its_own_folder_and_the_shared_code_not_the_other_models():
    """A change to FMGRD must not re-run MLDFR's stored jobs (``anomalib_ext.models`` holds every model)."""
    files = {path.relative_to(PACKAGE_DIR).as_posix() for path in fingerprint_files("anomalib_ext.models.MLDFR")}
    assert {"models/mldfr/torch_model.py", "models/mldfr/lightning_model.py", "models/components/base.py"} <= files
    assert not any(name.startswith(("models/fmgrd/", "models/smcc/", "models/rbae/", "models/n2n/")) for name in files)
    builtin = fingerprint_files("anomalib.models.Padim", "configs/model/mldfr_cpu.yaml")
    assert [path.relative_to(PACKAGE_DIR).as_posix() for path in builtin[:-1]] == list(SHARED_FILES)
    assert builtin[-1].name == "mldfr_cpu.yaml"
