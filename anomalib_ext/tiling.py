# Copyright (C) 2026 anomalib-ext developers
# SPDX-License-Identifier: Apache-2.0

"""Large images: cut them into tiles, run the model on the tiles as one batch, stitch the maps back.

Inspection images are often 2000-8000 px wide; resizing them to a model's 256 px input loses the small
defects. :class:`Tiling` is a Lightning callback that makes any of the package's models work on tiles
of the image without touching the model: the model is built, as usual, for its input size (the size
its pre-processor resizes to), and every image of a batch is cut into ``tile_size`` tiles with
anomalib's :class:`~anomalib.data.utils.tiler.Tiler` *before* the pre-processor sees it, so each tile
is resized (when ``tile_size`` differs from the model's input size) and normalised like an image.

- **Training** (``on_train_batch_start``): the batch becomes the batch of its tiles, so the model
  trains on tiles at full resolution. Paths get a ``#tile<k>`` suffix, so the feature caches keyed by
  path keep one entry per tile.
- **Validation, test, predict** (``on_*_batch_start`` / ``on_*_batch_end``): the model predicts on the
  tiles as one batch; the tiles' anomaly maps are resized to the tile's pixels, untiled (overlaps
  averaged) to a map as large as the image, and the image score is the maximum of that map. The
  image, labels, masks and paths are the image's again before anomalib's post-processor, evaluator and
  visualiser see the batch, so thresholds and metrics are those of the whole image.
- **Export**: :func:`export_tiled` exports the same computation (tiling, the pre-processor on every
  tile, the model, untiling, maximum) as one graph for a fixed image size, to ONNX or OpenVINO IR that
  anomalib's ``OpenVINOInferencer`` runs as any anomalib export.

The callback runs its batch hooks before the model's pre-processor and post-processor: Lightning
calls the trainer's callbacks before those a model adds in ``configure_callbacks``, and ``setup``
puts the callback back in front when another order was given.

Which models tile (the design of each, see :data:`TILING_SUPPORT`):

======  =========  ===================================================================================
Model   Tiles      Why
======  =========  ===================================================================================
FMGRD   yes        Reverse distillation is local: teacher/student features of a tile are those of
                   the tile; the fixed map size is the model's input size, which each tile is resized to.
MLDFR   yes        The restorer's fixed token count is that of the input size, which each tile has.
N2N     yes        Its fixed test-time noise has the input size, which each tile has.
SMCC    yes, with  Works on tiles, but its clustering pass (stage 0) and first memory bank read the
        a caveat   training set itself, not the trainer's batches: the centres are fitted on whole
                   images resized to the input size, while training and test see tiles. A warning says so.
RB-AE   no         Phase 2 repairs each image's features from *one* defect-free reference image at
                   the input size. Tiled, the reference would be one tile, used to repair tiles of
                   every other position of the part: the aligned-reference premise fails.
======  =========  ===================================================================================

Example:
    In a config for ``anomalib train --config ...`` (``docs/tiling.md``)::

        trainer:
          callbacks:
            - class_path: anomalib_ext.tiling.Tiling
              init_args: {tile_size: 256, stride: 256, image_size: [1024, 1024]}

    or from Python:

    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.tiling import Tiling
    >>> engine = Engine(callbacks=[Tiling(tile_size=256, stride=256, image_size=(1024, 1024))])  # doctest: +SKIP
    >>> engine.fit(model, datamodule=datamodule)  # doctest: +SKIP
    >>> export_tiled(model, Tiling(256, image_size=(1024, 1024)), "exports")  # doctest: +SKIP

See Also:
    :class:`anomalib.callbacks.TilerConfigurationCallback`: anomalib's tiling for the models that
    carry a ``tiler`` (PaDiM, PatchCore, STFPM, RD), inside their torch model.
    :class:`anomalib.data.utils.tiler.Tiler`: the tiling and untiling used here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from anomalib.data import InferenceBatch
from anomalib.data.transforms.utils import extract_transforms_by_type
from anomalib.data.utils.tiler import Tiler
from anomalib.deploy import ExportType
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import Compose, Resize

__all__ = ["TILING_SUPPORT", "TiledModel", "Tiling", "TilingSupport", "export_tiled"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilingSupport:
    """Whether a model's design allows tiling: ``tiles`` and the reason (or caveat) in one sentence."""

    tiles: bool
    reason: str
    caveat: bool = False


#: The package's models, by class name, and whether :class:`Tiling` applies to them.
TILING_SUPPORT: dict[str, TilingSupport] = {
    "FMGRD": TilingSupport(True, "reverse distillation is local; each tile is resized to the model's input size"),
    "MLDFR": TilingSupport(True, "the restorer's fixed token count is that of the input size, which each tile has"),
    "N2N": TilingSupport(True, "its fixed test-time noise has the input size, which each tile has"),
    "SMCC": TilingSupport(
        True,
        "SMCC's clustering pass and first memory bank read the training set itself, not the trainer's "
        "batches: its centres are fitted on whole images resized to the input size, while training and "
        "test see tiles",
        caveat=True,
    ),
    "RBAE": TilingSupport(
        False,
        "RB-AE repairs every image's features from one defect-free reference image at the input size; "
        "tiled, the reference would be one tile used for tiles of every other position of the part, "
        "so its aligned-reference premise fails",
    ),
}

#: Separator between an image's path and its tile index in the paths of a tiled batch.
TILE_PATH_SEPARATOR = "#tile"


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(H, W)`` of an int or a pair of ints, each >= 1, or a ValueError naming ``name``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in pair):
        msg = f"{name}={value!r} is invalid: expected a positive int or a pair of positive ints (height, width)."
        raise ValueError(msg)
    return int(pair[0]), int(pair[1])


class TileGrid:
    """Tile and untile ``(B, C, H, W)`` tensors on a grid, with anomalib's :class:`Tiler`.

    Validates the geometry with errors that name the value and what is expected, and untiles tiles
    of any size (a model's maps at its input size) by resizing them to the tile's pixels first.

    Args:
        tile_size: Tile ``(H, W)`` in pixels of the (optionally resized) image.
        stride: Step between tiles; ``None`` = ``tile_size`` (no overlap). Overlaps are averaged.

    Raises:
        ValueError: ``tile_size`` or ``stride`` is not positive, or ``stride`` exceeds ``tile_size``.
    """

    def __init__(self, tile_size: int | Sequence[int], stride: int | Sequence[int] | None = None) -> None:
        self.tile_size = _pair(tile_size, "tile_size")
        self.stride = self.tile_size if stride is None else _pair(stride, "stride")
        if self.stride[0] > self.tile_size[0] or self.stride[1] > self.tile_size[1]:
            msg = (
                f"stride={self.stride} is larger than tile_size={self.tile_size}: expected 1 <= stride <= "
                "tile_size on each side (a larger stride would leave pixels out of every tile)."
            )
            raise ValueError(msg)
        self.tiler = Tiler(tile_size=self.tile_size, stride=self.stride)

    def check_fits(self, image_size: Sequence[int]) -> None:
        """Raise a ValueError naming both sizes when a tile is larger than the image."""
        height, width = (int(side) for side in image_size[-2:])
        if self.tile_size[0] > height or self.tile_size[1] > width:
            msg = (
                f"tile_size={self.tile_size} is larger than the image ({height}, {width}): expected tiles no "
                "larger than the image on each side; lower tile_size or set a larger image_size."
            )
            raise ValueError(msg)

    def count(self, image_size: Sequence[int]) -> int:
        """Tiles per image of ``image_size`` (the image is zero-padded up to the grid when needed)."""
        height, width = (int(side) for side in image_size[-2:])
        rows = -(-(height - self.tile_size[0]) // self.stride[0]) + 1
        cols = -(-(width - self.tile_size[1]) // self.stride[1]) + 1
        return rows * cols

    def tile(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B * T, C, th, tw)``, image-major (the T tiles of image 0 first)."""
        self.check_fits(images.shape)
        return self.tiler.tile(images).to(images.dtype)

    def untile(self, tiles: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """``(B * T, C, h, w)`` of the last :meth:`tile` -> ``(B, C, H, W)``; tiles resized to the tile size."""
        if tuple(tiles.shape[-2:]) != self.tile_size:
            tiles = F.interpolate(tiles.float(), size=self.tile_size, mode=mode, **_align(mode))
        return self.tiler.untile(tiles.float())


def _align(mode: str) -> dict[str, Any]:
    return {"align_corners": False} if mode in {"bilinear", "bicubic"} else {}


def _resize(images: torch.Tensor, size: tuple[int, int] | None, mode: str = "bilinear") -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images.float(), size=size, mode=mode, **_align(mode)).to(images.dtype)


def _image_of(anomaly_map: torch.Tensor) -> torch.Tensor:
    """The image score: maximum of the ``(B, 1, H, W)`` map, ``(B,)``."""
    return anomaly_map.flatten(1).amax(dim=1)


class TiledModel(nn.Module):
    """Tile an image, pre-process and run ``model`` on the tiles as one batch, untile the maps.

    The exported computation of :func:`export_tiled` (the Lightning path of :class:`Tiling` does the
    same in the batch hooks). For a fixed image size, so the grid is fixed in the graph.

    Args:
        model: The eval-mode torch model (returns ``InferenceBatch(pred_score, anomaly_map)``).
        grid: The tile geometry.
        tile_transform: Applied to the ``(B * T, 3, th, tw)`` tiles (the pre-processor's export transform).
        image_size: Resize the input to this size before tiling (``None``: keep the input size).
    """

    def __init__(
        self,
        model: nn.Module,
        grid: TileGrid,
        tile_transform: nn.Module | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.grid = grid
        self.tile_transform = tile_transform
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``InferenceBatch(pred_score (B,), anomaly_map (B, 1, H', W'))``."""
        images = _resize(images, self.image_size)
        tiles = self.grid.tile(images)
        if self.tile_transform is not None:
            tiles = self.tile_transform(tiles)
        output = self.model(tiles)
        anomaly_map = self.grid.untile(output.anomaly_map)
        return InferenceBatch(pred_score=_image_of(anomaly_map), anomaly_map=anomaly_map)


def check_supported(pl_module: LightningModule) -> None:
    """Raise for a model whose design does not allow tiling; warn for one with a caveat (:data:`TILING_SUPPORT`)."""
    name = type(pl_module).__name__
    support = TILING_SUPPORT.get(name)
    if support is None:
        return  # another anomalib model: the batch hooks are generic
    if not support.tiles:
        msg = f"{name} cannot be tiled: {support.reason}. Train it on whole images resized to its input size."
        raise ValueError(msg)
    if support.caveat:
        logger.warning("Tiling %s: %s.", name, support.reason)


class Tiling(Callback):
    """Train and predict on tiles of large images, with maps and scores of the whole image.

    See the module docstring for what happens in each stage and which models tile.

    Args:
        tile_size: Tile ``(H, W)`` (or one int) in pixels of the image as tiled; each tile is then
            resized to the model's input size by its pre-processor (no resize when equal).
        stride: Step between tiles; ``None`` = ``tile_size`` (no overlap). ``stride < tile_size``
            overlaps tiles, whose maps are averaged where they overlap.
        image_size: Resize every image to this ``(H, W)`` before tiling (``None``: the size the
            datamodule gives). The anomaly map has this size.

    Raises:
        ValueError: ``tile_size``/``stride``/``image_size`` not positive, ``stride > tile_size``,
            ``tile_size`` larger than ``image_size`` or (at the first batch) than the image, or a model
            that cannot be tiled (RB-AE).
    """

    def __init__(
        self,
        tile_size: int | Sequence[int] = 256,
        stride: int | Sequence[int] | None = None,
        image_size: int | Sequence[int] | None = None,
    ) -> None:
        self.grid = TileGrid(tile_size, stride)
        self.image_size = None if image_size is None else _pair(image_size, "image_size")
        if self.image_size is not None:
            self.grid.check_fits(self.image_size)
        self._whole: dict[str, Any] = {}

    @property
    def tile_size(self) -> tuple[int, int]:
        """Tile ``(H, W)``."""
        return self.grid.tile_size

    @property
    def stride(self) -> tuple[int, int]:
        """Step between tiles ``(H, W)``."""
        return self.grid.stride

    def tiled_model(self, pl_module: LightningModule) -> TiledModel:
        """The exportable :class:`TiledModel` of ``pl_module`` (its torch model and pre-processor)."""
        pre_processor = getattr(pl_module, "pre_processor", None)
        transform = getattr(pre_processor, "export_transform", None) if pre_processor is not None else None
        return TiledModel(pl_module.model, self.grid, transform, self.image_size)

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuse models that cannot tile; run before the model's pre-/post-processor callbacks."""
        del stage
        check_supported(pl_module)
        components = [getattr(pl_module, name, None) for name in ("pre_processor", "post_processor")]
        positions = [i for i, callback in enumerate(trainer.callbacks) if any(callback is c for c in components)]
        if positions and trainer.callbacks.index(self) > min(positions):
            trainer.callbacks.remove(self)
            trainer.callbacks.insert(min(positions), self)
        self._resize_whole_images(trainer, pl_module)

    def _resize_whole_images(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Load whole images: replace the model's Resize that anomalib's datamodule adds to its datasets.

        ``AnomalibDataModule.setup`` (run before the callbacks' ``setup``) appends the pre-processor's
        Resize to every subset's augmentations, which would shrink the whole image to the model's input
        size before it is tiled. That Resize (the same object) becomes ``Resize(image_size)``, or is
        dropped when ``image_size`` is ``None``; the user's own augmentations stay.
        """
        pre_processor = getattr(pl_module, "pre_processor", None)
        transform = getattr(pre_processor, "transform", None)
        model_resizes = extract_transforms_by_type(transform, Resize) if transform is not None else []
        datamodule = getattr(trainer, "datamodule", None)
        if not model_resizes or datamodule is None:
            return
        model_resize = model_resizes[0]
        whole = None if self.image_size is None else Resize(self.image_size, antialias=True)
        for subset in ("train_data", "val_data", "test_data", "predict_data"):
            dataset = getattr(datamodule, subset, None)
            augmentations = getattr(dataset, "augmentations", None)
            if augmentations is model_resize:
                dataset.augmentations = whole
            elif isinstance(augmentations, Compose) and any(t is model_resize for t in augmentations.transforms):
                kept = [t for t in augmentations.transforms if t is not model_resize]
                dataset.augmentations = Compose([*kept, whole] if whole is not None else kept)

    # ------------------------------------------------------------------ tiling a batch
    def _tile_batch(self, batch: Any, keep_whole: bool) -> None:
        images = _resize(batch.image, self.image_size)
        masks = batch.gt_mask
        if masks is not None and self.image_size is not None:
            masks = _resize(masks.unsqueeze(1).float(), self.image_size, mode="nearest").squeeze(1).to(masks.dtype)
        if keep_whole:
            self._whole = {
                "image_path": batch.image_path,
                "mask_path": batch.mask_path,
                "gt_label": batch.gt_label,
                "gt_mask": masks,
            }
        count = self.grid.count(images.shape)
        if masks is not None:  # tv_tensors, so the pre-processor's transforms treat them as masks and images
            batch.gt_mask = tv_tensors.Mask((self.grid.tile(masks.unsqueeze(1).float()) > 0.5).squeeze(1))
        batch.image = tv_tensors.Image(self.grid.tile(images))  # last: untile uses the last tile()'s geometry
        if batch.gt_label is not None:
            batch.gt_label = batch.gt_label.repeat_interleave(count)
        for field in ("image_path", "mask_path"):
            paths = getattr(batch, field)
            if paths is not None:
                tiled = [f"{path}{TILE_PATH_SEPARATOR}{k}" for path in paths for k in range(count)]
                setattr(batch, field, tiled)

    def _untile_batch(self, outputs: Any) -> None:
        if outputs.anomaly_map is None:
            msg = "Tiling needs the model's anomaly maps to stitch the image's map; the model returned none."
            raise ValueError(msg)
        anomaly_map = outputs.anomaly_map
        squeeze = anomaly_map.dim() == 3
        anomaly_map = self.grid.untile(anomaly_map.unsqueeze(1) if squeeze else anomaly_map)
        pred_mask = outputs.pred_mask
        if pred_mask is not None:
            mask = pred_mask.unsqueeze(1) if pred_mask.dim() == 3 else pred_mask
            pred_mask = (self.grid.untile(mask.float(), mode="nearest") > 0.5).reshape(anomaly_map.shape)
            pred_mask = pred_mask.squeeze(1) if squeeze else pred_mask
        pred_label = outputs.pred_label
        if pred_label is not None:
            pred_label = pred_label.reshape(anomaly_map.shape[0], -1).any(dim=1)
        image = self.grid.untile(outputs.image)  # the pre-processed tiles, stitched (visualisation)
        outputs.image = image
        outputs.anomaly_map = anomaly_map.squeeze(1) if squeeze else anomaly_map
        outputs.pred_score = _image_of(anomaly_map)
        outputs.pred_mask = pred_mask
        outputs.pred_label = pred_label
        for field, value in self._whole.items():
            setattr(outputs, field, value)

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """The batch becomes the batch of its tiles; the model trains on tiles."""
        del trainer, pl_module, batch_idx
        self._tile_batch(batch, keep_whole=False)

    def _start(self, batch: Any) -> None:
        self._tile_batch(batch, keep_whole=True)

    def _end(self, outputs: Any, batch: Any) -> None:
        self._untile_batch(outputs)
        if batch is not outputs:
            for field in ("image", "image_path", "mask_path", "gt_label", "gt_mask"):
                setattr(batch, field, getattr(outputs, field))

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, *args: Any) -> None:
        """Tile the batch (the image's fields are kept for the batch's end)."""
        self._start(batch)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        """Untile the maps; the image score is the maximum of the image's map."""
        self._end(outputs, batch)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, *args: Any) -> None:
        """As :meth:`on_validation_batch_start`."""
        self._start(batch)

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        """As :meth:`on_validation_batch_end`."""
        self._end(outputs, batch)

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, *args: Any) -> None:
        """As :meth:`on_validation_batch_start`."""
        self._start(batch)

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        """As :meth:`on_validation_batch_end`."""
        self._end(outputs, batch)


class _TiledExport:
    """Within the block, ``pl_module`` computes :class:`TiledModel` (pre-processor moved inside it)."""

    def __init__(self, pl_module: LightningModule, tiling: Tiling) -> None:
        self.pl_module = pl_module
        self.tiling = tiling

    def __enter__(self) -> LightningModule:
        module = self.pl_module
        self.saved = (module.model, module.pre_processor)
        module.model = self.tiling.tiled_model(module)
        module.pre_processor = None
        return module

    def __exit__(self, *exc: object) -> None:
        self.pl_module.model, self.pl_module.pre_processor = self.saved


def export_tiled(
    pl_module: LightningModule,
    tiling: Tiling,
    export_root: str | Path,
    input_size: tuple[int, int] | None = None,
    export_type: ExportType | str = ExportType.OPENVINO,
    **kwargs: Any,
) -> Path:
    """Export the tiled inference of ``pl_module`` (tiling, pre-processor, model, untiling, post-processor).

    The graph has a fixed input size (the tile grid is part of it): ``tiling.image_size`` when set
    (any input is resized to it first), else ``input_size``. The exported model takes a ``(B, 3, H, W)``
    image in ``[0, 1]`` and returns ``pred_score`` and ``anomaly_map`` of the whole image, as anomalib's
    exports do; ``OpenVINOInferencer`` runs it.

    Args:
        pl_module: A trained model (``RBAE`` is refused, see :data:`TILING_SUPPORT`).
        tiling: The tiling it was trained with.
        export_root: Folder of the export (anomalib's layout: ``weights/openvino/model.xml``).
        input_size: ``(H, W)`` of the images; required unless ``tiling.image_size`` is set.
        export_type: ``"openvino"`` or ``"onnx"``.
        **kwargs: Passed to ``to_openvino`` / ``to_onnx`` (e.g. ``compression_type``).

    Returns:
        The path of the exported model.

    Raises:
        ValueError: No input size, a tile larger than the image, or an unknown export type.
    """
    check_supported(pl_module)
    size = tiling.image_size or (None if input_size is None else _pair(input_size, "input_size"))
    if size is None:
        msg = "export_tiled needs the image size: pass input_size=(H, W) or a Tiling with image_size."
        raise ValueError(msg)
    tiling.grid.check_fits(size)
    export_type = ExportType(export_type)
    pl_module.eval()
    with _TiledExport(pl_module, tiling) as module:
        if export_type == ExportType.OPENVINO:
            return module.to_openvino(export_root, input_size=size, **kwargs)
        if export_type == ExportType.ONNX:
            return module.to_onnx(export_root, input_size=size, **kwargs)
    msg = f"export_type={export_type.value!r} is not supported by export_tiled: expected 'openvino' or 'onnx'."
    raise ValueError(msg)
