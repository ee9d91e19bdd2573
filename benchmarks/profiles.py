"""Settings profiles and the resolution of model and dataset names into runnable job specs.

Two profiles:

- ``cpu``: for this kind of machine (a few CPU cores, no internet). anomalib's built-ins get
  256 x 256 inputs and the offline EfficientNet-Lite0 served by :mod:`anomalib_ext.backbones`;
  PaDiM and PatchCore take their single pass, trained built-ins (STFPM, ...) the schedule given on
  the command line (``--max-epochs Stfpm=N`` or ``--max-steps Stfpm=N``; without one,
  ``default_epochs``). Our models run ``configs/model/<name>_cpu.yaml`` as written (input size,
  backbone, ``trainer.max_epochs`` or ``trainer.max_steps``). DemoTextures is built at 256 px. No
  cap on training images unless ``--max-train-images`` sets one.
- ``paper``: each paper's own settings: our ``configs/model/<name>.yaml`` and anomalib's
  defaults for its built-ins (which are their papers' settings). Meant for a GPU machine with the
  datasets present; backbones are then downloaded by timm as usual.

**PatchCore's coreset is bounded in the ``cpu`` profile.** anomalib's greedy coreset search costs
(bank size) x (patches) x (projected dimension): on ELPV poly at 256 px (690 training images, 32 x 32
patches each, 706,560 patches) the paper's ratio 0.1 would run for hours on a CPU. The profile keeps
anomalib's ``coreset_sampling_ratio`` argument and adds a seeded random subsample of at most
``coreset_max_patches`` training patches (:data:`CPU_CORESET_MAX_PATCHES`) taken before the greedy
search (:class:`benchmarks.worker.CoresetPatchLimit`, a Lightning callback that runs before
PatchCore's own ``fit``): the memory bank holds ``ratio x min(patches, limit)`` patches
(:data:`CPU_CORESET_RATIO` x :data:`CPU_CORESET_MAX_PATCHES` = 0.05 x 40,000 = 2,000). Measured on ELPV
poly (1 thread, machine shared with other jobs): image AUROC 0.855 with 160 CPU s of training and 54
of testing, the same AUROC as 2,000 patches drawn from 100,000 (about 285 CPU s of training); banks of
1,000 patches reached 0.843-0.845. Table and commands in ``docs/benchmarks.md``.

How anomalib's built-ins get offline weights without changing their code: anomalib's torch
models build ``TimmFeatureExtractor(backbone, ...)``, which asks timm to download. While a built-in
is constructed under the ``cpu`` profile, :func:`offline_backbones` rebinds the name
``TimmFeatureExtractor`` in anomalib's model modules to :class:`anomalib_ext.backbones.FeatureExtractor`
(a subclass with the same arguments and forward whose weights come from our resolver). Nothing
else changes: the model is anomalib's, trained and exported by anomalib's Engine.

Example:
    >>> from benchmarks.profiles import PROFILES, resolve_model
    >>> spec = resolve_model("Padim", PROFILES["cpu"])
    >>> spec.init_args["backbone"]
    'efficientnet_lite0'
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs" / "model"
PACKAGE_DIR = PROJECT_ROOT / "anomalib_ext"

OFFLINE_BACKBONE = "efficientnet_lite0"

#: PatchCore's coreset under the cpu profile: ratio of anomalib's greedy search, applied to a seeded
#: random subsample of at most this many training patches (see the module docstring).
CPU_CORESET_RATIO = 0.05
CPU_CORESET_MAX_PATCHES = 40_000

# anomalib built-ins under the cpu profile: the offline backbone, its layer names (timm's
# ``features_only`` module names for EfficientNet-Lite0: blocks.1/2/4 have 24/40/112 channels at
# strides 4/8/16) and bounded work.
CPU_BUILTIN_ARGS: dict[str, dict[str, Any]] = {
    "Padim": {"backbone": OFFLINE_BACKBONE, "layers": ["blocks.1", "blocks.2", "blocks.4"], "n_features": 100},
    "Patchcore": {
        "backbone": OFFLINE_BACKBONE,
        "layers": ["blocks.2", "blocks.4"],
        "coreset_sampling_ratio": CPU_CORESET_RATIO,
        "num_neighbors": 9,
    },
    "Stfpm": {"backbone": OFFLINE_BACKBONE, "layers": ["blocks.1", "blocks.2", "blocks.4"]},
    # anomalib's reverse-distillation decoder exists for ResNets only: the smallest one, resnet18,
    # whose weights the resolver finds only in $ANOMALIB_EXT_WEIGHTS (resnet18.tv_in1k.pth); without
    # them the run records a WeightsNotFoundError naming the file to fetch.
    "ReverseDistillation": {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"]},
    "Draem": {},
    "EfficientAd": {"model_size": "small"},
    "Dfm": {"backbone": OFFLINE_BACKBONE, "layer": "blocks.4"},
    "Dfkde": {"backbone": OFFLINE_BACKBONE, "layers": ["blocks.2", "blocks.4"]},
}


@dataclass(frozen=True)
class Profile:
    """A settings profile.

    Args:
        name: ``"cpu"`` or ``"paper"``.
        image_size: Side of the square input of anomalib's built-ins; ``None`` keeps each model's own
            pre-processor. Our models always use their config's pre-processor.
        default_epochs: Epochs of a trained model whose config, ``trainer_arguments`` and command
            line name no schedule (the report's ``epochs`` and ``steps`` columns show what ran).
        offline_backbones: Build anomalib's built-ins with the offline resolver's feature extractor.
        config_suffix: Our models' config file suffix (``"_cpu"`` reads ``configs/model/mldfr_cpu.yaml``).
        builtin_args: Init arguments of anomalib's built-ins, by class name.
        max_train_images: Cap on training images per category (a random subset drawn with the job's
            seed); ``None``: all.
        coreset_max_patches: PatchCore only: seeded random subsample of the training patches taken
            before the greedy coreset search; ``None``: all patches (anomalib's behaviour).
        train_batch_size: Training batch size (a model's config ``data.init_args`` wins).
        eval_batch_size: Test batch size.
        latency_batch_sizes: Batch sizes of the latency measurements.
        warmup: Untimed forward passes before timing.
        repeats: Timed forward passes; the median is reported.
        openvino_precisions: OpenVINO ``INFERENCE_PRECISION_HINT`` values measured (``"default"``
            leaves the device's choice, bf16 on CPUs with AMX/AVX512-BF16).
        heatmap_images: Defective test images shown per model in the heat-map grid.
        demo_image_size: Side of the DemoTextures images built for this profile.
        model_data_args: Datamodule arguments a model needs, by model class name (e.g. SMCC's batch
            must hold its ``memory_bank_images``); a ``data.init_args`` batch size in the model's config wins.
    """

    name: str
    image_size: int | None
    default_epochs: int
    offline_backbones: bool
    config_suffix: str
    builtin_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_train_images: int | None = None
    coreset_max_patches: int | None = None
    train_batch_size: int = 8
    eval_batch_size: int = 8
    latency_batch_sizes: tuple[int, ...] = (1, 8)
    warmup: int = 3
    repeats: int = 10
    openvino_precisions: tuple[str, ...] = ("f32", "default")
    heatmap_images: int = 4
    demo_image_size: int = 256
    model_data_args: dict[str, dict[str, Any]] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        image_size=256,
        default_epochs=3,
        offline_backbones=True,
        config_suffix="_cpu",
        builtin_args=CPU_BUILTIN_ARGS,
        max_train_images=None,
        coreset_max_patches=CPU_CORESET_MAX_PATCHES,
        demo_image_size=256,
        # the batch sizes the usage lines of configs/model/smcc_cpu.yaml and rbae_cpu.yaml give
        model_data_args={"SMCC": {"train_batch_size": 16}, "RBAE": {"train_batch_size": 4}},
    ),
    "paper": Profile(
        name="paper",
        image_size=None,
        default_epochs=200,
        offline_backbones=False,
        config_suffix="",
        builtin_args={},
        train_batch_size=16,
        eval_batch_size=16,
        warmup=10,
        repeats=50,
        model_data_args={"SMCC": {"train_batch_size": 16}},
    ),
}


@dataclass
class ModelSpec:
    """A model resolved from its name: what to build and how long to train it.

    ``section`` is the ``model:`` section of an anomalib CLI config (``class_path`` and ``init_args``),
    which the worker instantiates with jsonargparse as the CLI does. ``max_epochs`` and ``max_steps``
    are Lightning's (``None``: not set).
    """

    name: str
    class_path: str
    init_args: dict[str, Any]
    max_epochs: int | None
    ours: bool
    max_steps: int | None = None
    config: str | None = None
    trainer_args: dict[str, Any] = field(default_factory=dict)
    data_args: dict[str, Any] = field(default_factory=dict)

    @property
    def section(self) -> dict[str, Any]:
        """The ``model:`` section: ``{"class_path": ..., "init_args": ...}``."""
        return {"class_path": self.class_path, "init_args": self.init_args}


@dataclass
class DataSpec:
    """A datamodule resolved from its name."""

    name: str
    class_path: str
    init_args: dict[str, Any]


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def our_models() -> dict[str, str]:
    """The package's models: short name (lower-case class name, the config stem) -> class name."""
    from anomalib_ext.registry import registered_models

    return {name.lower(): name for name in registered_models()}


def _anomalib_model_class(name: str) -> str | None:
    """Class path of anomalib's built-in model called ``name`` (case-insensitive), if any."""
    import anomalib.models

    for attr in dir(anomalib.models):
        if attr.lower() == name.lower():
            obj = getattr(anomalib.models, attr)
            if isinstance(obj, type):
                return f"anomalib.models.{attr}"
    return None


DATA_KEYS_FROM_MODEL_CONFIG = ("train_batch_size", "eval_batch_size", "val_split_mode", "val_split_ratio")


def read_model_config(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(model section, trainer section, data batch sizes)`` of an anomalib CLI config.

    Raises:
        ValueError: If the file has no ``model:`` section with a ``class_path``.
    """
    config = yaml.safe_load(path.read_text()) or {}
    model = config.get("model")
    if isinstance(model, str):
        model = {"class_path": model}
    if not isinstance(model, dict) or "class_path" not in model:
        msg = f"Config {path}: expected a 'model:' section with a 'class_path' (as anomalib's CLI reads it)."
        raise ValueError(msg)
    data = (config.get("data") or {}).get("init_args") or {}
    data = {key: data[key] for key in DATA_KEYS_FROM_MODEL_CONFIG if key in data}
    section = {"class_path": model["class_path"], "init_args": dict(model.get("init_args") or {})}
    return section, dict(config.get("trainer") or {}), data


def schedule(
    config_epochs: int | None,
    config_steps: int | None,
    epochs: int | None,
    steps: int | None,
    default_epochs: int,
) -> tuple[int | None, int | None]:
    """``(max_epochs, max_steps)`` of a job: the command line's, else the config's, else ``default_epochs``.

    A schedule given on the command line replaces the config's whole schedule: ``--max-steps`` alone
    trains for that many optimiser steps whatever the config's epochs (``max_epochs=-1``), and
    ``--max-epochs`` alone drops the config's ``max_steps``. Given both, Lightning stops at the first.
    """
    if epochs is not None or steps is not None:
        return (epochs if epochs is not None else (-1 if steps is not None else None)), steps
    if config_epochs is not None or config_steps is not None:
        if config_epochs is None and config_steps is not None:
            return -1, config_steps  # Lightning's default max_epochs (1000) would otherwise cap it
        return config_epochs, config_steps
    return default_epochs, None


def set_init_args(init_args: dict[str, Any], changes: dict[str, Any] | None, model: str) -> dict[str, Any]:
    """A copy of ``init_args`` with each dotted key of ``changes`` set (``"scoring.num_neighbors"``).

    Missing groups are created as mappings, which jsonargparse turns into the model's dataclass groups
    as it does a config file's.

    Raises:
        ValueError: A key goes through a value that is not a mapping (naming the key, the model and the value).
    """
    result = copy.deepcopy(init_args)
    for key, value in (changes or {}).items():
        node = result
        *groups, leaf = key.split(".")
        for depth, group in enumerate(groups):
            child = node.setdefault(group, {})
            if not isinstance(child, dict):
                where = ".".join(groups[: depth + 1])
                msg = f"Model argument {key!r} of {model}: {where} is {child!r}, not a group of arguments."
                raise ValueError(msg)  # noqa: TRY004 (a bad key on the command line, not a caller's type)
            node = child
        node[leaf] = value
    return result


def resolve_model(
    name: str,
    profile: Profile,
    epochs: int | None = None,
    steps: int | None = None,
    init_changes: dict[str, Any] | None = None,
) -> ModelSpec:
    """Turn a model name into a :class:`ModelSpec` under ``profile``.

    ``name`` is one of our models (its class name or short name, case-insensitive, read from
    ``configs/model/<short><suffix>.yaml``), an anomalib built-in (``Patchcore``), or a class path.
    ``epochs``/``steps`` override the schedule (see :func:`schedule`); a model whose
    ``trainer_arguments`` fix ``max_epochs`` (PaDiM, PatchCore: 1) keeps it, as anomalib's Engine would.
    ``init_changes`` sets init arguments over the config's (dotted keys, :func:`set_init_args`).

    Raises:
        ValueError: If the name is unknown or our model's config is missing.
    """
    ours = our_models()
    key = name.lower()
    if key in ours:
        path = CONFIG_DIR / f"{key}{profile.config_suffix}.yaml"
        if not path.is_file():
            msg = f"Config {path} of model {name!r} is missing."
            raise ValueError(msg)
        section, trainer, data_args = read_model_config(path)
        config_epochs = trainer.pop("max_epochs", None)
        config_steps = trainer.pop("max_steps", None)
        max_epochs, max_steps = schedule(config_epochs, config_steps, epochs, steps, profile.default_epochs)
        return ModelSpec(
            name=ours[key],
            class_path=section["class_path"],
            init_args=set_init_args(section["init_args"], init_changes, ours[key]),
            max_epochs=max_epochs,
            max_steps=max_steps,
            ours=True,
            config=str(path.relative_to(PROJECT_ROOT)),
            trainer_args=trainer,
            data_args={**profile.model_data_args.get(ours[key], {}), **data_args},
        )
    class_path = name if "." in name else _anomalib_model_class(name)
    if class_path is None:
        msg = f"Unknown model {name!r}: not one of ours ({', '.join(sorted(ours))}) nor an anomalib model."
        raise ValueError(msg)
    class_name = class_path.rpartition(".")[2]
    fixed_epochs = builtin_epochs(class_path)
    if fixed_epochs is not None:
        max_epochs, max_steps = fixed_epochs, None
    else:
        max_epochs, max_steps = schedule(None, None, epochs, steps, profile.default_epochs)
    return ModelSpec(
        name=class_name,
        class_path=class_path,
        init_args=set_init_args(profile.builtin_args.get(class_name, {}), init_changes, class_name),
        max_epochs=max_epochs,
        max_steps=max_steps,
        ours=False,
        data_args=dict(profile.model_data_args.get(class_name, {})),
    )


def builtin_epochs(class_path: str) -> int | None:
    """Epochs a built-in fixes in ``trainer_arguments`` (e.g. 1 for PaDiM), else ``None``."""
    cls = _import(class_path)
    prop = getattr(cls, "trainer_arguments", None)
    if isinstance(prop, property):
        # trainer_arguments is an instance property; the one-epoch models return a constant dict.
        with contextlib.suppress(Exception):
            value = prop.fget(object.__new__(cls))
            return value.get("max_epochs")
    return None


def _datamodule_class_path(name: str) -> str:
    if "." in name:
        return name
    import anomalib.data

    from anomalib_ext.registry import registered_datamodules

    if name in registered_datamodules():
        return f"anomalib_ext.data.{name}"
    if hasattr(anomalib.data, name):
        return f"anomalib.data.{name}"
    msg = f"Unknown dataset {name!r}: give a datamodule class name of anomalib or anomalib_ext, or a class path."
    raise ValueError(msg)


def resolve_data(name: str, category: str, profile: Profile, extra: dict[str, Any] | None = None) -> DataSpec:
    """Turn a datamodule name (``DemoTextures``, ``ELPV``, ``MVTecAD``, a class path) into a :class:`DataSpec`."""
    class_path = _datamodule_class_path(name)
    init_args: dict[str, Any] = {
        "category": category,
        "train_batch_size": profile.train_batch_size,
        "eval_batch_size": profile.eval_batch_size,
        "num_workers": 0,
    }
    if class_path.endswith("DemoTextures"):
        init_args["image_size"] = profile.demo_image_size
        init_args["root"] = f"./datasets/demo_textures_{profile.demo_image_size}"
    init_args.update(extra or {})
    return DataSpec(name=class_path.rpartition(".")[2], class_path=class_path, init_args=init_args)


def default_categories(dataset: str) -> list[str]:
    """Categories of a dataset when none are given: the ``CATEGORIES`` of our datamodule's module.

    Raises:
        ValueError: For a dataset whose categories must be named (``--categories``).
    """
    with contextlib.suppress(ValueError):
        class_path = _datamodule_class_path(dataset)
        if class_path.startswith("anomalib_ext."):
            categories = getattr(importlib.import_module(_import(class_path).__module__), "CATEGORIES", None)
            if categories:
                return list(categories)
    msg = f"Name the categories of {dataset} with --categories."
    raise ValueError(msg)


def settings_hash(settings: dict[str, Any]) -> str:
    """Short stable hash of a job's settings; a stored result with another hash is stale."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


#: Package files every model's numbers depend on: the weights resolver, the evaluator, the post-processor.
SHARED_FILES = ("backbones.py", "post_processing.py", "models/defaults.py")


def _defining_file(class_path: str) -> Path:
    """The source file of the module that defines the class (not the package it is re-exported from)."""
    return Path(inspect.getfile(_import(class_path)))


def fingerprint_files(class_path: str, config: str | None = None) -> list[Path]:
    """The files :func:`code_fingerprint` hashes, in order.

    Our models: the folder of the module that defines the class (``anomalib_ext/models/mldfr/`` for
    ``anomalib_ext.models.MLDFR``, not the ``anomalib_ext.models`` package it is re-exported from, whose
    folder holds every model), the shared model code (``anomalib_ext/models/*.py``,
    ``models/components/``, ``augment/``), the files in :data:`SHARED_FILES` and the config.
    anomalib's built-ins: :data:`SHARED_FILES` and the config.
    """
    files: list[Path] = []
    if class_path.startswith("anomalib_ext"):
        files = sorted(_defining_file(class_path).parent.rglob("*.py"))
        files += sorted((PACKAGE_DIR / "models").glob("*.py"))
        for shared in ("models/components", "augment"):
            files += sorted((PACKAGE_DIR / shared).rglob("*.py"))
    files += [PACKAGE_DIR / name for name in SHARED_FILES]
    if config:
        files.append(PROJECT_ROOT / config)
    return [file for file in dict.fromkeys(files) if file.is_file()]


def code_fingerprint(class_path: str, config: str | None = None) -> str:
    """Hash of the code a model's numbers depend on: the bytes of :func:`fingerprint_files`.

    anomalib's built-ins add anomalib's version. A stored result whose fingerprint differs (a model
    was changed after it ran) is run again; a change to one of our models runs only that model again.
    """
    digest = hashlib.sha256()
    if not class_path.startswith("anomalib_ext"):
        from importlib import metadata

        digest.update(f"anomalib=={metadata.version('anomalib')}".encode())
    for file in fingerprint_files(class_path, config):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def data_fingerprint(class_path: str) -> str | None:
    """Hash of our datamodule's module (its split or generator changes the numbers); ``None`` for anomalib's."""
    if not class_path.startswith("anomalib_ext."):
        return None
    return hashlib.sha256(_defining_file(class_path).read_bytes()).hexdigest()[:12]


def profile_dict(profile: Profile) -> dict[str, Any]:
    """The profile as plain JSON-serialisable data."""
    return json.loads(json.dumps(asdict(profile), default=list))


@contextlib.contextmanager
def offline_backbones() -> Iterator[None]:
    """Build anomalib's models with :class:`anomalib_ext.backbones.FeatureExtractor` (offline weights).

    The package's public :func:`anomalib_ext.backbones.offline_anomalib_backbones`, with
    ``truncate=True``: the built-ins stop at their deepest tap like this package's models, so both
    sides of a comparison skip the same unused stages. anomalib's model code is not modified.
    """
    from anomalib_ext.backbones import offline_anomalib_backbones

    with offline_anomalib_backbones(truncate=True):
        yield
