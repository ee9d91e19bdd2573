"""Settings profiles and the resolution of model and dataset names into runnable job specs.

Two profiles:

- ``cpu``: for this kind of machine (a few CPU cores, no internet). Inputs are resized to
  128 x 128, every backbone is the offline EfficientNet-Lite0 served by
  :mod:`anomalib_ext.backbones`, schedules are short (anomalib's trained built-ins get 3 epochs;
  ours the schedule of their ``_cpu`` config, already short), and
  anomalib's PatchCore gets a tiny coreset (ratio 0.01 of at most 64 training images), because
  its greedy coreset search is extremely slow on a CPU at the paper's settings (about 14 hours
  for 760 images at 256 px, ratio 0.1). Our models use ``configs/model/<name>_cpu.yaml``.
- ``paper``: each paper's own settings: our ``configs/model/<name>.yaml`` and anomalib's
  defaults for its built-ins (which are their papers' settings). Meant for a GPU machine with the
  datasets present; backbones are then downloaded by timm as usual.

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
import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs" / "model"

# Short names of our models (folder and config stem) -> class name exported by anomalib_ext.models.
OUR_MODELS = {"mldfr": "MLDFR", "smcc": "SMCC", "rbae": "RBAE", "n2n": "N2N", "fmgrd": "FMGRD"}

OFFLINE_BACKBONE = "efficientnet_lite0"

# anomalib built-ins under the cpu profile: the offline backbone, its layer names (timm's
# ``features_only`` module names for EfficientNet-Lite0: blocks.1/2/4 have 24/40/112 channels at
# strides 4/8/16) and bounded work.
CPU_BUILTIN_ARGS: dict[str, dict[str, Any]] = {
    "Padim": {"backbone": OFFLINE_BACKBONE, "layers": ["blocks.1", "blocks.2", "blocks.4"], "n_features": 100},
    "Patchcore": {
        "backbone": OFFLINE_BACKBONE,
        "layers": ["blocks.2", "blocks.4"],
        "coreset_sampling_ratio": 0.01,
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
        image_size: Side of the square model input; ``None`` keeps each model's own pre-processor.
        max_epochs: Cap on the epochs of anomalib's built-ins (``None``: no cap). Our models train
            for their config's ``trainer.max_epochs`` (their schedules, e.g. RB-AE's two phases,
            depend on it) unless ``--max-epochs`` overrides it.
        default_epochs: Epochs for models whose config and defaults name none.
        offline_backbones: Build anomalib's built-ins with the offline resolver's feature extractor.
        config_suffix: Our models' config file suffix (``"_cpu"`` reads ``configs/model/mldfr_cpu.yaml``).
        builtin_args: Init arguments of anomalib's built-ins, by class name.
        max_train_images: Cap on training images per category (a seeded random subset).
        train_batch_size: Training batch size.
        eval_batch_size: Test batch size.
        latency_batch_sizes: Batch sizes of the latency measurements.
        warmup: Untimed forward passes before timing.
        repeats: Timed forward passes; the median is reported.
        openvino_precisions: OpenVINO ``INFERENCE_PRECISION_HINT`` values measured (``"default"``
            leaves the device's choice, bf16 on CPUs with AMX/AVX512-BF16).
        heatmap_images: Defective test images shown per model in the heat-map grid.
        demo_image_size: Side of the DemoTextures images built for this profile.
        model_data_args: Datamodule arguments a model needs, by model name (e.g. SMCC's batch must
            hold its ``memory_bank_images``); a ``data.init_args`` batch size in the model's config wins.
    """

    name: str
    image_size: int | None
    max_epochs: int | None
    default_epochs: int
    offline_backbones: bool
    config_suffix: str
    builtin_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_train_images: int | None = None
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
        image_size=128,
        max_epochs=3,
        default_epochs=3,
        offline_backbones=True,
        config_suffix="_cpu",
        builtin_args=CPU_BUILTIN_ARGS,
        max_train_images=64,
        demo_image_size=128,
        # the batch sizes the usage lines of configs/model/smcc_cpu.yaml and rbae_cpu.yaml give
        model_data_args={"SMCC": {"train_batch_size": 16}, "RBAE": {"train_batch_size": 4}},
    ),
    "paper": Profile(
        name="paper",
        image_size=None,
        max_epochs=None,
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
    """A model resolved from its name: what to build and how long to train it."""

    name: str
    class_path: str
    init_args: dict[str, Any]
    max_epochs: int
    ours: bool
    config: str | None = None
    trainer_args: dict[str, Any] = field(default_factory=dict)
    data_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    """A datamodule resolved from its name."""

    name: str
    class_path: str
    init_args: dict[str, Any]


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _anomalib_model_class(name: str) -> str | None:
    """Class path of anomalib's built-in model called ``name`` (case-insensitive), if any."""
    import anomalib.models

    for attr in dir(anomalib.models):
        if attr.lower() == name.lower():
            obj = getattr(anomalib.models, attr)
            if isinstance(obj, type):
                return f"anomalib.models.{attr}"
    return None


DATA_KEYS_FROM_MODEL_CONFIG = ("train_batch_size", "eval_batch_size")


def _read_model_config(path: Path) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(class_path, init_args, trainer, data batch sizes)`` from an anomalib CLI config."""
    config = yaml.safe_load(path.read_text()) or {}
    model = config.get("model", config)
    if isinstance(model, str):
        model = {"class_path": model}
    data = (config.get("data") or {}).get("init_args") or {}
    data = {key: data[key] for key in DATA_KEYS_FROM_MODEL_CONFIG if key in data}
    return model["class_path"], dict(model.get("init_args") or {}), dict(config.get("trainer") or {}), data


def _epochs(epochs: int | None, profile: Profile) -> int:
    epochs = epochs or profile.default_epochs
    return min(epochs, profile.max_epochs) if profile.max_epochs else epochs


def resolve_model(name: str, profile: Profile, epochs: int | None = None) -> ModelSpec:
    """Turn a model name into a :class:`ModelSpec` under ``profile``.

    ``name`` is one of our short names (``mldfr``, case-insensitive; read from
    ``configs/model/<name><suffix>.yaml``), an anomalib built-in (``Patchcore``), or a class
    path. ``epochs`` overrides the config's epochs (still capped by the profile).

    Raises:
        ValueError: If the name is unknown or our model's config is missing.
    """
    key = name.lower()
    if key in OUR_MODELS:
        path = CONFIG_DIR / f"{key}{profile.config_suffix}.yaml"
        if not path.is_file():
            msg = f"Config {path} of model {name!r} is missing."
            raise ValueError(msg)
        class_path, init_args, trainer, data_args = _read_model_config(path)
        config_epochs = trainer.pop("max_epochs", None)
        return ModelSpec(
            name=OUR_MODELS[key],
            class_path=class_path,
            init_args=init_args,
            max_epochs=int(epochs or config_epochs or profile.default_epochs),
            ours=True,
            config=str(path.relative_to(PROJECT_ROOT)),
            trainer_args=trainer,
            data_args={**profile.model_data_args.get(OUR_MODELS[key], {}), **data_args},
        )
    class_path = name if "." in name else _anomalib_model_class(name)
    if class_path is None:
        msg = f"Unknown model {name!r}: not one of ours ({', '.join(OUR_MODELS)}) nor an anomalib model."
        raise ValueError(msg)
    class_name = class_path.rpartition(".")[2]
    init_args = dict(profile.builtin_args.get(class_name, {}))
    max_epochs = _epochs(epochs or _builtin_epochs(class_path), profile)
    return ModelSpec(
        name=class_name,
        class_path=class_path,
        init_args=init_args,
        max_epochs=max_epochs,
        ours=False,
        # validate once, after the last epoch: the post-processor's thresholds come from it
        trainer_args={"check_val_every_n_epoch": max_epochs},
        data_args=dict(profile.model_data_args.get(class_name, {})),
    )


def _builtin_epochs(class_path: str) -> int | None:
    """Epochs a built-in requires (``trainer_arguments['max_epochs']``, e.g. 1 for PaDiM), else ``None``."""
    cls = _import(class_path)
    prop = getattr(cls, "trainer_arguments", None)
    if isinstance(prop, property):
        # trainer_arguments is an instance property; the one-epoch models return a constant dict.
        with contextlib.suppress(Exception):
            value = prop.fget(object.__new__(cls))
            return value.get("max_epochs")
    return None


def resolve_data(name: str, category: str, profile: Profile, extra: dict[str, Any] | None = None) -> DataSpec:
    """Turn a datamodule name (``DemoTextures``, ``MVTecAD``, a class path) into a :class:`DataSpec`."""
    if "." in name:
        class_path = name
    else:
        import anomalib.data

        import anomalib_ext.data

        if hasattr(anomalib_ext.data, name):
            class_path = f"anomalib_ext.data.{name}"
        elif hasattr(anomalib.data, name):
            class_path = f"anomalib.data.{name}"
        else:
            msg = (
                f"Unknown dataset {name!r}: give a datamodule class name of anomalib or anomalib_ext, or a class path."
            )
            raise ValueError(msg)
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
    """Categories of a dataset when none are given (the demo generator's for DemoTextures)."""
    if dataset.rpartition(".")[2] == "DemoTextures":
        from anomalib_ext.data.demo import CATEGORIES

        return list(CATEGORIES)
    msg = f"Name the categories of {dataset} with --categories."
    raise ValueError(msg)


def settings_hash(settings: dict[str, Any]) -> str:
    """Short stable hash of a job's settings; a stored result with another hash is stale."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def code_fingerprint(class_path: str, config: str | None = None) -> str:
    """Hash of the code a model runs: its package's ``.py`` files, its config and our backbone resolver.

    For anomalib's built-ins the anomalib version stands for their code. A stored result whose
    fingerprint differs (a model was changed after it ran) is run again.
    """
    digest = hashlib.sha256()
    module = class_path.rpartition(".")[0]
    if module.startswith("anomalib_ext"):
        spec = importlib.util.find_spec(module)
        folder = Path(spec.origin).parent if spec and spec.origin else None
        files = sorted(folder.rglob("*.py")) if folder else []
    else:
        from importlib import metadata

        digest.update(f"anomalib=={metadata.version('anomalib')}".encode())
        files = []
    files.append(PROJECT_ROOT / "anomalib_ext" / "backbones.py")
    if config:
        files.append(PROJECT_ROOT / config)
    for file in files:
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def profile_dict(profile: Profile) -> dict[str, Any]:
    """The profile as plain JSON-serialisable data."""
    return json.loads(json.dumps(asdict(profile), default=list))


@contextlib.contextmanager
def offline_backbones() -> Iterator[None]:
    """Build anomalib's models with :class:`anomalib_ext.backbones.FeatureExtractor` (offline weights).

    Rebinds ``TimmFeatureExtractor`` in every imported ``anomalib.models`` module to our subclass
    while the block runs, and restores it afterwards. anomalib's model code is not modified.
    """
    from anomalib.models.components import TimmFeatureExtractor

    from anomalib_ext.backbones import FeatureExtractor

    patched = []
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("anomalib.models") and getattr(module, "TimmFeatureExtractor", None) is (
            TimmFeatureExtractor
        ):
            module.TimmFeatureExtractor = FeatureExtractor
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            module.TimmFeatureExtractor = TimmFeatureExtractor
