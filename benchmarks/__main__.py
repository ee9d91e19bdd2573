r"""Command line of the benchmark harness: ``python -m benchmarks --help``.

Example:
    The documented ``cpu`` run (``docs/benchmarks.md``)::

        python -m benchmarks --profile cpu --name demo-cpu \\
            --models mldfr,smcc,rbae,n2n,fmgrd,Patchcore,Padim,ReverseDistillation,Stfpm \\
            --datasets DemoTextures --categories brick
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

DEFAULT_MODELS = "mldfr,smcc,rbae,n2n,fmgrd,Patchcore,Padim,ReverseDistillation,Stfpm"
#: Seconds one job may run unless ``--timeout`` says otherwise.
DEFAULT_TIMEOUT_S = 1800


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _name_values(text: str, option: str, expected: str) -> list[tuple[str, str]]:
    """``"n2n=6, Stfpm=5"`` -> ``[("n2n", "6"), ("Stfpm", "5")]``: the comma-separated ``name=value`` parts.

    Raises:
        argparse.ArgumentTypeError: A part has no ``=``, no name or no value (the message names ``option``,
            the part and ``expected``, the accepted form).
    """
    pairs = []
    for part in _split(text):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            msg = f"{option} expects {expected}, got {part!r} in {text!r}"
            raise argparse.ArgumentTypeError(msg)
        pairs.append((name.strip(), value.strip()))
    return pairs


def _data_args(pairs: list[str]) -> dict[str, Any]:
    import yaml

    args = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            msg = f"--data-arg expects key=value, got {pair!r}"
            raise argparse.ArgumentTypeError(msg)
        args[key] = yaml.safe_load(value)
    return args


def parse_model_args(pairs: list[str], models: list[str]) -> dict[str, dict[str, Any]]:
    """``["smcc:lr=0.0", "smcc:scoring.num_neighbors=1"]`` -> ``{"smcc": {"lr": 0.0, "scoring.num_neighbors": 1}}``.

    Values are read as YAML (``1e-4``, ``[blocks.1, blocks.2]``, ``null``); keys are dotted paths into
    the model's ``init_args``, as in its config file. Model names are lower-cased.

    Raises:
        argparse.ArgumentTypeError: A pair is not ``model:key=value`` or names a model not in ``models``.
    """
    import yaml

    args: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, colon, assignment = pair.partition(":")
        key, sep, value = assignment.partition("=")
        name, key = name.strip().lower(), key.strip()
        if not colon or not sep or not name or not key:
            msg = f"--model-arg expects model:key=value (e.g. smcc:scoring.num_neighbors=1), got {pair!r}"
            raise argparse.ArgumentTypeError(msg)
        args.setdefault(name, {})[key] = yaml.safe_load(value)
    check_model_names({"--model-arg": args}, models)
    return args


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Train, test and time anomaly-detection models side by side; write CSV, markdown and charts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help="comma-separated: our short names (mldfr, smcc, rbae, n2n, fmgrd), anomalib models "
        "(Patchcore, Padim, ReverseDistillation, Stfpm, Draem, EfficientAd, ...) or class paths",
    )
    parser.add_argument(
        "--datasets",
        default="DemoTextures",
        help="comma-separated datamodules: DemoTextures, DAGM, MVTecAD, Visa, MPDD, BTech, ... or class paths",
    )
    parser.add_argument(
        "--categories",
        default=None,
        help="comma-separated categories for every dataset, or dataset:cat1+cat2 per dataset separated by ';' "
        "(default: all categories of DemoTextures; required for other datasets)",
    )
    parser.add_argument("--profile", choices=("cpu", "paper"), default="cpu", help="settings profile")
    parser.add_argument("--name", default=None, help="run name (folder under --root); default <profile>")
    parser.add_argument("--root", type=Path, default=Path("benchmarks/runs"), help="folder of the runs")
    parser.add_argument("--output", type=Path, default=None, help="run folder (overrides --root/--name)")
    parser.add_argument("--data-root", default=None, help="dataset root passed to every datamodule")
    parser.add_argument("--data-arg", action="append", default=[], help="extra datamodule argument key=value")
    parser.add_argument(
        "--max-epochs",
        default=None,
        help="schedule in epochs: N for every model, or per model 'n2n=6,Stfpm=20' (others keep their "
        "config's or the profile's default); replaces the config's schedule (PaDiM/PatchCore keep 1 epoch)",
    )
    parser.add_argument(
        "--max-steps",
        default=None,
        help="schedule in optimiser steps: N for every model, or per model 'mldfr=300,Stfpm=500' (max_epochs=-1 "
        "unless --max-epochs also names the model: Lightning stops at the first reached)",
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        help="change one init argument of one model, model:key=value (repeatable; dotted keys reach into "
        "groups, values are YAML): 'smcc:lr=0.0', 'mldfr:training.lr_step_interval=step'; the record keeps "
        "the resulting init_args, so a changed value runs again",
    )
    parser.add_argument(
        "--curve-steps",
        default=None,
        help="learning-curve mode: comma-separated global steps, e.g. 50,100,200,400; every job trains "
        "max(steps) optimiser steps and is evaluated on the test set at each (for choosing schedules)",
    )
    parser.add_argument(
        "--curve-runs",
        default=None,
        help="learning curve of separate runs, for a model whose schedule depends on its length (RB-AE's "
        "phases): comma-separated step counts, e.g. 200,400,725; one job per count, each the job of "
        "--max-steps COUNT. Models named in --max-epochs/--max-steps, and PaDiM/PatchCore, run once as "
        "references (dashed lines on the curve chart)",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="seeds, one job per seed: 0,1,2 for every dataset, or per dataset 'DemoTextures:0+1+2;ELPV:0' "
        "(datasets not named get --seed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed when --seeds is not given")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and OpenVINO CPU threads of every job (1: stable timings on a shared machine; "
        "on a dedicated machine use its core count)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="override the profile's input side")
    parser.add_argument("--max-train-images", type=int, default=None, help="override the profile's training-image cap")
    parser.add_argument("--repeats", type=int, default=None, help="override the profile's timed repeats")
    parser.add_argument("--warmup", type=int, default=None, help="override the profile's warm-up passes")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds one job may run before it is killed"
    )
    parser.add_argument(
        "--openvino-timeout", type=float, default=300, help="seconds one OpenVINO precision may take (compile + timing)"
    )
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO export and its timings")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also export FP16 and INT8 (NNCF post-training quantisation calibrated on the training images) "
        "and measure their OpenVINO latency and test-set image AUROC beside f32",
    )
    parser.add_argument(
        "--int8-types",
        default=None,
        help="with --int8, the OpenVINO operation types the INT8 export quantises, per model of this package: "
        "'smcc=Convolution+GroupConvolution,mldfr=all' ('all': every type NNCF quantises); replaces the "
        "model's int8_quantised_types for the run, everything else stays in float (for finding which "
        "operations lose accuracy in 8 bits)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="run again the jobs whose stored record failed")
    parser.add_argument("--force", action="store_true", help="ignore stored records, run everything again")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the stored records")
    parser.add_argument(
        "--publish",
        type=Path,
        default=None,
        help="also put the summary tables into this markdown page (between its benchmark-results markers) and "
        "copy the charts to --publish-images",
    )
    parser.add_argument(
        "--publish-images", type=Path, default=Path("docs/images/benchmarks"), help="folder of the published charts"
    )
    parser.add_argument(
        "--publish-records",
        type=Path,
        default=Path("benchmarks/published"),
        help="with --publish, the folder that gets the run's records and run.json (committed, for --reuse-records)",
    )
    parser.add_argument(
        "--reuse-records",
        type=Path,
        default=None,
        help="first copy this folder's records (one that --publish-records wrote) into the run folder where it has "
        "none; the jobs whose settings and model code still match are then reused, the others run",
    )
    return parser


def parse_categories(text: str | None, datasets: list[str]) -> dict[str, list[str]]:
    """``brick,grass`` (for every dataset) or ``DemoTextures:brick+grass;MVTecAD:bottle`` -> {dataset: [...]}."""
    from benchmarks.profiles import default_categories

    if not text:
        return {dataset: default_categories(dataset) for dataset in datasets}
    if ":" not in text:
        return dict.fromkeys(datasets, _split(text))
    chosen: dict[str, list[str]] = {}
    for part in text.split(";"):
        dataset, _, categories = part.partition(":")
        chosen[dataset.strip()] = [c for c in categories.split("+") if c]
    for dataset in datasets:
        if dataset not in chosen:
            chosen[dataset] = default_categories(dataset)
    return chosen


def parse_per_model(text: str | None, option: str = "--max-epochs") -> int | dict[str, int] | None:
    """``"3"`` -> 3 (every model); ``"n2n=6,Stfpm=5"`` -> ``{"n2n": 6, "stfpm": 5}`` (names lower-cased).

    Raises:
        argparse.ArgumentTypeError: A value is not a positive integer (the message names ``option``).
    """
    if not text:
        return None

    def number(value: str, name: str | None = None) -> int:
        try:
            parsed = int(value)
        except ValueError:
            parsed = 0
        if parsed <= 0:
            where = f" for {name}" if name else ""
            msg = f"{option} expects positive integers, got {value.strip()!r}{where} in {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return parsed

    if "=" not in text:
        return number(text)
    return {name.lower(): number(value, name) for name, value in _name_values(text, option, "N or name=N,name=N")}


parse_epochs = parse_per_model


def parse_int8_types(text: str | None, models: list[str], int8: bool) -> dict[str, list[str] | None] | None:
    """``"smcc=Convolution+MatMul,mldfr=all"`` -> ``{"smcc": ["Convolution", "MatMul"], "mldfr": None}``.

    ``all`` (``None``) lets NNCF quantise every type it can, as anomalib's export does; the model's own
    ``int8_quantised_types`` is replaced either way. Only this package's models have that attribute.

    Raises:
        argparse.ArgumentTypeError: Without ``--int8``; a part is not ``name=Type+Type``; a name is not one
            of this package's models in ``models``; a type is not one NNCF quantises (the message lists them).
    """
    from anomalib_ext.models.components.base import QUANTISED_TYPES
    from benchmarks.profiles import our_models

    if not text:
        return None
    if not int8:
        msg = "--int8-types changes the INT8 export: add --int8"
        raise argparse.ArgumentTypeError(msg)
    ours = our_models()
    chosen: dict[str, list[str] | None] = {}
    for given, value in _name_values(text, "--int8-types", "name=Type+Type or name=all"):
        name = given.lower()
        if name not in ours:
            msg = f"--int8-types names {name!r}: only this package's models ({', '.join(sorted(ours))}) take it"
            raise argparse.ArgumentTypeError(msg)
        types = [t.strip() for t in value.split("+") if t.strip()]
        if types == ["all"]:
            chosen[name] = None
            continue
        unknown = sorted(set(types) - QUANTISED_TYPES)
        if unknown:
            msg = (
                f"--int8-types: {', '.join(unknown)} for {name} is not an operation type NNCF quantises "
                f"(one of {', '.join(sorted(QUANTISED_TYPES))}, or 'all')"
            )
            raise argparse.ArgumentTypeError(msg)
        chosen[name] = types
    check_model_names({"--int8-types": chosen}, models)
    return chosen


def curve_timeout_warning(curve_steps: list[int] | None, timeout_s: float) -> str | None:
    """A warning when a learning curve runs under the default job timeout, else ``None``.

    One curve job trains to its last step; a curve on real images easily outlasts 30 minutes, and the
    job is then killed with only the points it reached (an MLDFR curve to 800 steps on ELPV stopped
    before 400 that way).
    """
    if not curve_steps or timeout_s != DEFAULT_TIMEOUT_S:
        return None
    return (
        f"warning: --curve-steps up to {max(curve_steps)} steps with the default --timeout of "
        f"{DEFAULT_TIMEOUT_S:.0f} s per job: a job that runs longer is killed with only the points it reached; "
        "pass --timeout SECONDS."
    )


def parse_steps(text: str | None, option: str = "--curve-steps") -> list[int] | None:
    """``"50,100,200"`` -> ``[50, 100, 200]`` (sorted, unique).

    Raises:
        argparse.ArgumentTypeError: A step is not a positive integer (the message names ``option``).
    """
    if not text:
        return None
    msg = f"{option} expects comma-separated positive integers, got {text!r}"
    try:
        steps = sorted({int(part) for part in _split(text)})
    except ValueError as error:
        raise argparse.ArgumentTypeError(msg) from error
    if not steps or steps[0] <= 0:
        raise argparse.ArgumentTypeError(msg)
    return steps


def check_curve_runs(
    curve_runs: list[int] | None,
    curve_steps: list[int] | None,
    epochs: int | dict[str, int] | None,
    steps: int | dict[str, int] | None,
) -> None:
    """Refuse ``--curve-runs`` beside ``--curve-steps`` or beside one schedule for every model.

    Raises:
        argparse.ArgumentTypeError: Naming the options that conflict.
    """
    if not curve_runs:
        return
    if curve_steps:
        msg = "--curve-runs and --curve-steps are two kinds of learning curve: give one of them."
        raise argparse.ArgumentTypeError(msg)
    for option, value in (("--max-epochs", epochs), ("--max-steps", steps)):
        if isinstance(value, int):
            msg = (
                f"--curve-runs sets the steps of every run; {option} {value} for every model contradicts it "
                f"(name models, '{option} Stfpm=10', to keep them at one schedule as references)."
            )
            raise argparse.ArgumentTypeError(msg)


def parse_seeds(seeds: str | None, seed: int, datasets: list[str] | None = None) -> list[int] | dict[str, list[int]]:
    """Seeds of the jobs: ``"0,1,2"`` -> ``[0, 1, 2]`` (order kept, duplicates dropped); without it ``[seed]``.

    The per-dataset form ``"DemoTextures:0+1+2;ELPV:0"`` gives ``{dataset: seeds}`` for ``datasets``
    (a dataset not named gets ``[seed]``).

    Raises:
        argparse.ArgumentTypeError: A seed is not an integer, or a dataset is not in ``datasets``.
    """
    if not seeds:
        return [seed]

    def integers(text: str, separator: str) -> list[int]:
        try:
            return list(dict.fromkeys(int(part) for part in text.split(separator) if part.strip()))
        except ValueError as error:
            msg = f"--seeds expects integers, got {text!r} in {seeds!r}"
            raise argparse.ArgumentTypeError(msg) from error

    if ":" not in seeds:
        return integers(seeds, ",")
    chosen = {}
    for part in seeds.split(";"):
        dataset, _, values = part.partition(":")
        dataset = dataset.strip()
        if datasets is not None and dataset not in datasets:
            msg = f"--seeds names dataset {dataset!r}, which is not in --datasets ({', '.join(datasets)})"
            raise argparse.ArgumentTypeError(msg)
        chosen[dataset] = integers(values, "+")
    return {dataset: chosen.get(dataset, [seed]) for dataset in (datasets or chosen)}


def check_model_names(overrides: dict[str, int | dict[str, Any] | None], models: list[str]) -> None:
    """Every per-model override names a model of ``--models`` (any case).

    Raises:
        argparse.ArgumentTypeError: Naming the option, the unknown name and the models of the run.
    """
    known = {name.lower() for name in models}
    for option, value in overrides.items():
        if isinstance(value, dict):
            unknown = sorted(set(value) - known)
            if unknown:
                msg = f"{option} names {', '.join(unknown)}, which is not in --models ({', '.join(models)})"
                raise argparse.ArgumentTypeError(msg)


class Display:
    """Progress: a rich bar (job N of M, elapsed, time left) on a terminal, plain lines otherwise."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = self.console.is_terminal
        self.started = time.monotonic()
        self.run_times: list[float] = []
        self.last_stage: dict[str, str] = {}
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("benchmark", total=total)

    def __enter__(self) -> Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def _eta(self, index: int, total: int) -> str:
        if not self.run_times:
            return "?"
        left = (total - index) * sum(self.run_times) / len(self.run_times)
        return f"~{left / 60:.0f} min"

    def __call__(self, event: str, job: Any, info: dict[str, Any]) -> None:
        """Show ``event`` (``start``, ``poll``, ``done``, ``reused``) of ``job``."""
        where = f"[{info['index'] + 1}/{info['total']}] {job.model} on {job.dataset}/{job.category} seed {job.seed}"
        where += f", {job.curve_run_steps} steps" if job.curve_run_steps is not None else ""
        if event == "poll":
            stage = info.get("stage", "starting")
            if "epoch" in info:
                stage += f" epoch {info['epoch']}/{info.get('max_epochs')}"
            if info.get("max_steps", -1) not in (-1, None) or info.get("stage") == "curve":
                stage += f" step {info.get('step')}/{info.get('max_steps', '?')}"
            if "batch" in info:
                stage += f" batch {info['batch']}/{info.get('batches')}"
            self.progress.update(self.task, description=f"{where}: {stage} ({info['elapsed']:.0f} s)")
            plain = info.get("stage", "starting") + (f" epoch {info['epoch']}" if "epoch" in info else "")
            plain += f" step {info['step']}" if info.get("stage") == "curve" else ""
            if not self.live and self.last_stage.get(job.key) != plain:
                self.last_stage[job.key] = plain
                self.console.print(f"{where}: {plain} ({info['elapsed']:.0f} s)", highlight=False)
            return
        if event == "start":
            self.console.print(
                f"{where}: start (runs left ~{self._eta(info['index'], info['total'])})", highlight=False
            )
            return
        record = info["record"]
        if event == "done":
            self.run_times.append(float(record.get("wall_time_s") or 0))
        status = "reused" if event == "reused" else "done"
        summary = (
            f"FAILED: {record['error']}"
            if record.get("error")
            else f"image AUROC {record.get('image_AUROC') or float('nan'):.3f}, "
            f"AUPRO {record.get('pixel_AUPRO') or float('nan'):.3f}, "
            f"{record.get('wall_time_s') or 0:.0f} s"
        )
        self.console.print(f"{where}: {status}, {summary}", highlight=False)
        self.progress.advance(self.task)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 (failed jobs are recorded, not fatal), 2 on a bad command line."""
    from benchmarks.profiles import PROFILES
    from benchmarks.report import publish, write_report
    from benchmarks.runner import Runner, load_record, make_jobs, save_records, seed_records, write_run_info

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    models = _split(args.models)
    datasets = _split(args.datasets)
    try:
        epochs = parse_per_model(args.max_epochs, "--max-epochs")
        steps = parse_per_model(args.max_steps, "--max-steps")
        curve_steps = parse_steps(args.curve_steps)
        curve_runs = parse_steps(args.curve_runs, "--curve-runs")
        check_curve_runs(curve_runs, curve_steps, epochs, steps)
        seeds = parse_seeds(args.seeds, args.seed, datasets)
        check_model_names({"--max-epochs": epochs, "--max-steps": steps}, models)
        categories = parse_categories(args.categories, datasets)
        data_args = _data_args(args.data_arg)
        model_args = parse_model_args(args.model_arg, models)
        int8_types = parse_int8_types(args.int8_types, models, args.int8)
    except (argparse.ArgumentTypeError, ValueError) as error:
        parser.error(str(error))
    profile = PROFILES[args.profile]
    overrides = {
        "image_size": args.image_size,
        "max_train_images": args.max_train_images,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.image_size:
        overrides["demo_image_size"] = args.image_size
    profile = dataclasses.replace(profile, **overrides)
    output = args.output or args.root / (args.name or args.profile)
    console = Console()
    if args.data_root:
        data_args["root"] = args.data_root

    jobs = make_jobs(
        models,
        datasets,
        categories,
        profile,
        seeds=seeds,
        threads=args.threads,
        epochs=epochs,
        steps=steps,
        curve_steps=curve_steps,
        curve_runs=curve_runs,
        openvino=not args.no_openvino,
        int8=args.int8,
        data_args=data_args,
        model_args=model_args,
        int8_types=int8_types,
    )
    started = datetime.now(timezone.utc)
    if args.reuse_records:
        try:
            copied = seed_records(jobs, output, args.reuse_records)
        except FileNotFoundError as error:
            parser.error(str(error))
        console.print(f"reuse-records: {copied} record(s) copied from {args.reuse_records}", highlight=False)
    if args.report_only:
        records = [r for r in (load_record(output / "records" / f"{job.key}.json") for job in jobs) if r]
    else:
        output.mkdir(parents=True, exist_ok=True)
        info = {
            "curve_steps": curve_steps,
            "curve_runs": curve_runs,
            "started_at": started.isoformat(timespec="seconds"),
        }
        write_run_info(output, profile, seeds, args.threads, argv, **info)
        console.print(
            f"benchmark: {len(jobs)} jobs, seeds {seeds}, profile {profile.name}, output {output}",
            highlight=False,
        )
        if warning := curve_timeout_warning(curve_steps, args.timeout):
            console.print(warning, style="yellow", highlight=False)
        with Display(len(jobs), console) as display:
            runner = Runner(
                output,
                timeout_s=args.timeout,
                retry_failed=args.retry_failed,
                force=args.force,
                progress=display,
                openvino_timeout_s=args.openvino_timeout,
            )
            records = runner.run(jobs)
        finished = datetime.now(timezone.utc)
        write_run_info(
            output,
            profile,
            seeds,
            args.threads,
            argv,
            **info,
            finished_at=finished.isoformat(timespec="seconds"),
            wall_time_s=round((finished - started).total_seconds(), 1),
            jobs=[job.key for job in jobs],
        )
    written = write_report(records, output)
    if args.publish:
        publish(records, output, args.publish, args.publish_images)
        saved = save_records(jobs, output, args.publish_records)
        console.print(
            f"published: {args.publish}, charts in {args.publish_images}, {len(saved)} records in "
            f"{args.publish_records}",
            highlight=False,
        )
    failed = sum(1 for r in records if r.get("error"))
    console.print(
        f"report: {written['markdown'][0]}, {len(written['charts'])} charts, "
        f"{len(written['heatmaps'])} heat-map grids; "
        f"{failed} of {len(records)} jobs failed (see errors/)",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
