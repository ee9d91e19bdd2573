"""Multilevel feature fusion (MLFF) of MLDFR: frozen CNN maps + an asymmetric deep pair, on one grid.

The fused features of an image concatenate, along channels and on the stride-16 token grid:

1. a *shared* low-level set, the same on both sides: CNN taps (ResNet-18 ``layer1-3`` in the
   paper) max-pooled down to the grid of the deepest tap;
2. an *asymmetric* deep pair: a shallow tap for the input side (the damaged image, or the test
   image) and a deep tap for the target side (the intact image, or the test image again). In the
   paper these are CaiT-XS24-384 blocks 5 and 15. Offline (no pretrained transformer, A31) they are
   EfficientNet-Lite0's blocks 5.0 (192 channels) and 6.0 (320 channels), both at stride 32 and
   upsampled x2 to the grid. The target side is then wider than the input side, and the restorer
   ends in a linear map to the target's width.

Either deep source can be switched off (``vit_backbone=None``, ``FeatureConfig.deep_branch=False``): with neither,
this is the paper's CNN-only MLDFR (Table VII "R18 1+2+3"); with no CNN it is "CaiT 15-5".

Backbones come from :mod:`anomalib_ext.backbones` (offline-first weights), are frozen
(``requires_grad=False``) and kept in eval mode (BatchNorm running statistics never change).

Example:
    >>> import torch
    >>> from anomalib_ext.models.mldfr.feature_extractor import MultilevelFeatureExtractor
    >>> from anomalib_ext.models.mldfr.config import FeatureConfig
    >>> extractor = MultilevelFeatureExtractor(
    ...     cnn_backbone="efficientnet_lite0", cnn_layers=[1, 2, 3], vit_backbone=None, input_size=(64, 64),
    ...     pre_trained=False,
    ...     config=FeatureConfig(deep_branch=True))
    >>> f_in, f_tgt = extractor(torch.rand(1, 3, 64, 64))
    >>> f_in.shape, f_tgt.shape, extractor.num_channels, extractor.target_channels, extractor.grid_size
    (torch.Size([1, 368, 4, 4]), torch.Size([1, 496, 4, 4]), 368, 496, (4, 4))

See Also:
    - Spec: sections 2.1.2-2.1.4, 8 and assumptions A1, A2, A4, A31 of ``methods/mldfr.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from anomalib_ext.backbones import FeatureExtractor, create_model

from .config import FeatureConfig


def _split_tap(tap: str) -> tuple[str, int]:
    """``"blocks.5.3"`` -> (``"blocks.5"``, 3)."""
    parent, _, index = tap.rpartition(".")
    if not parent or not index.isdigit():
        msg = f"Deep tap {tap!r} must name a block inside a stage, like 'blocks.5.0'."
        raise ValueError(msg)
    return parent, int(index)


def check_cnn_layers(backbone: str, layers: Sequence[str | int]) -> list[str | int]:
    """Check that ``layers`` are feature taps of ``backbone``, distinct and ordered shallow to deep.

    anomalib's ``TimmFeatureExtractor`` would raise a bare ``IndexError`` for an index out of range
    and silently drop an unknown name (with only a logged warning), leaving fewer taps than asked.

    Args:
        backbone: timm name of the CNN.
        layers: Taps as timm feature indices (``[1, 2, 3]``) or module names (``["layer1", ...]``).

    Returns:
        ``layers`` as a list.

    Raises:
        ValueError: Naming the bad value and the accepted taps of ``backbone`` (index, name, stride).
    """
    info = timm.create_model(backbone, pretrained=False, features_only=True).feature_info.info
    names = [tap["module"] for tap in info]
    accepted = ", ".join(f"{index} = {tap['module']!r} (stride {tap['reduction']})" for index, tap in enumerate(info))
    layers = list(layers)
    if not layers:
        msg = f"cnn_layers is empty: give at least one tap of {backbone}; accepted taps: {accepted}."
        raise ValueError(msg)
    indices = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, str)):
            index = None
        elif isinstance(layer, int):
            index = layer if 0 <= layer < len(info) else None
        else:
            index = names.index(layer) if layer in names else None
        if index is None:
            msg = f"cnn_layers value {layer!r} is not a feature tap of {backbone}: accepted taps are {accepted}."
            raise ValueError(msg)
        indices.append(index)
    if any(later <= earlier for earlier, later in itertools.pairwise(indices)):
        msg = (
            f"cnn_layers={layers!r} must list distinct taps of {backbone} from shallow to deep "
            f"(they are pooled to the grid of the last one); accepted taps: {accepted}."
        )
        raise ValueError(msg)
    return layers


class MultilevelFeatureExtractor(nn.Module):
    """Fused input-side and target-side features of images, on the backbones' stride-16 grid.

    Args:
        cnn_backbone: A1: timm name of the CNN (``"resnet18.tv_in1k"`` in the paper), or ``None``.
        cnn_layers: CNN taps (timm feature names or indices), shallow to deep; all are pooled to
            the grid of the last one.
        vit_backbone: timm name of the CaiT (``"cait_xs24_384.fb_dist_in1k"``), or ``None``.
        input_size: ``(H, W)`` of the images (sets CaiT's patch grid; fixed for export).
        pre_trained: Real ImageNet weights (``False`` only for tests where weights do not matter).
        config: Pooling, CaiT blocks and the offline deep branch
            (:class:`~anomalib_ext.models.mldfr.config.FeatureConfig`; its input fields are not used here).

    The defaults (the paper's backbones) are :class:`~anomalib_ext.models.mldfr.torch_model.MLDFRModel`'s:
    every argument here is required.
    """

    def __init__(
        self,
        *,
        cnn_backbone: str | None,
        cnn_layers: Sequence[str | int],
        vit_backbone: str | None,
        input_size: tuple[int, int],
        pre_trained: bool,
        config: FeatureConfig | None = None,
    ) -> None:
        super().__init__()
        config = config or FeatureConfig()
        if cnn_backbone is None and vit_backbone is None:
            msg = "MLDFR needs at least one backbone: set cnn_backbone or vit_backbone."
            raise ValueError(msg)
        if config.deep_branch and cnn_backbone is None:
            msg = "deep_branch=True takes its blocks from the CNN: set cnn_backbone."
            raise ValueError(msg)
        self.cnn_pool = config.cnn_pool
        self.deep_upsample = config.deep_upsample
        deep_branch = config.deep_branch
        vit_input_block, vit_target_block = config.vit_input_block, config.vit_target_block
        self.input_size = tuple(int(side) for side in input_size)
        height, width = self.input_size
        self.grid_size = (height // 16, width // 16)
        self.num_channels = 0  # input side; the target side differs by the deep pair's change of width
        self.deep_input_channels = self.deep_output_channels = 0

        self.cnn: FeatureExtractor | None = None
        self.cnn_pool_steps: list[int] = []
        self.deep_stage: nn.Sequential | None = None
        if cnn_backbone is not None:
            cnn_layers = check_cnn_layers(cnn_backbone, cnn_layers)
            # the deep branch runs the stage after the last tap itself (truncated below)
            self.cnn = FeatureExtractor(
                cnn_backbone, layers=list(cnn_layers), pre_trained=pre_trained, truncate=not deep_branch
            )
            info = self.cnn.feature_extractor.feature_info
            reductions = info.reduction()
            self.grid_size = (height // reductions[-1], width // reductions[-1])
            self.cnn_pool_steps = [round(math.log2(reductions[-1] / r)) for r in reductions]
            self.num_channels += sum(info.channels())
            if deep_branch:
                self._build_deep_branch(info.module_name()[-1], config.deep_input_tap, config.deep_target_tap)
                self.num_channels += self.deep_input_channels

        self.vit: nn.Module | None = None
        if vit_backbone is not None:
            if not 1 <= vit_input_block <= vit_target_block:
                msg = f"Need 1 <= vit_input_block ({vit_input_block}) <= vit_target_block ({vit_target_block})."
                raise ValueError(msg)
            self.vit_input_index = vit_input_block - 1
            self.vit_target_index = vit_target_block - 1
            kwargs = {} if pre_trained else {"img_size": self.input_size}  # random-weight tests at any size
            self.vit = create_model(vit_backbone, pretrained=pre_trained, **kwargs)
            native = tuple(self.vit.patch_embed.img_size)
            if native != tuple(self.input_size):
                msg = (
                    f"{vit_backbone} with pretrained weights takes {native[0]}x{native[1]} images (timm does not "
                    f"resample its position embedding), got input_size {tuple(self.input_size)}: set the "
                    f"pre-processor's image size to {native}."
                )
                raise ValueError(msg)
            self.vit.prune_intermediate_layers(indices=[self.vit_input_index, self.vit_target_index], prune_norm=True)
            patch = self.vit.patch_embed.patch_size
            vit_grid = (height // patch[0], width // patch[1])
            if self.cnn is not None and vit_grid != self.grid_size:
                msg = f"CNN grid {self.grid_size} and transformer grid {vit_grid} differ: check cnn_layers."
                raise ValueError(msg)
            self.grid_size = vit_grid
            self.num_channels += self.vit.embed_dim
        self.target_channels = self.num_channels - self.deep_input_channels + self.deep_output_channels
        self.requires_grad_(False)
        self.eval()

    def _build_deep_branch(self, last_tap: str, input_tap: str, target_tap: str) -> None:
        stage_name, input_index = _split_tap(input_tap)
        target_stage_name, target_index = _split_tap(target_tap)
        parent, _, stage_index = stage_name.rpartition(".")
        target_parent, _, target_stage_index = target_stage_name.rpartition(".")
        last_parent, _, last_index = last_tap.rpartition(".")
        if (
            target_parent != parent
            or (int(target_stage_index), target_index) < (int(stage_index), input_index)
            or parent != last_parent
            or int(stage_index) != int(last_index) + 1
        ):
            msg = (
                f"deep_input_tap={input_tap!r} and deep_target_tap={target_tap!r} must be blocks (input first) "
                f"of the stages after the last CNN tap {last_tap!r}, the input in the stage right after it."
            )
            raise ValueError(msg)
        assert self.cnn is not None
        stages = self.cnn.feature_extractor.get_submodule(parent)
        blocks: list[nn.Module] = []
        for index in range(int(stage_index), int(target_stage_index) + 1):
            children = list(stages[index].children())
            blocks.extend(children[: target_index + 1] if index == int(target_stage_index) else children)
        self.deep_stage = nn.Sequential(*blocks)
        self.deep_input_blocks = input_index + 1
        # The CNN never needs the stages after its last tap: drop them so they are not computed.
        if isinstance(stages, nn.Sequential):
            self.cnn.feature_extractor.add_module(parent, stages[: int(last_index) + 1])
        self.deep_stage.eval()
        with torch.no_grad():
            probe = torch.zeros(1, self.cnn.feature_extractor.feature_info.channels()[-1], 4, 4)
            self.deep_input_channels = int(self.deep_stage[: self.deep_input_blocks](probe).shape[1])
            self.deep_output_channels = int(self.deep_stage(probe).shape[1])

    def train(self, mode: bool = True) -> MultilevelFeatureExtractor:
        """Backbones stay in eval mode whatever the caller asks (frozen BatchNorm)."""
        return super().train(False)

    def _pool(self, features: torch.Tensor, steps: int) -> torch.Tensor:
        pool = F.max_pool2d if self.cnn_pool == "max" else F.avg_pool2d
        for _ in range(steps):
            features = pool(features, kernel_size=2, stride=2)
        return features

    def _cnn_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled low-level concat ``(B, sum C_i, h, w)`` and the raw last tap."""
        assert self.cnn is not None
        taps = list(self.cnn(images).values())
        pooled = [self._pool(tap, steps) for tap, steps in zip(taps, self.cnn_pool_steps, strict=True)]
        return torch.cat(pooled, dim=1), taps[-1]

    def _to_grid(self, features: torch.Tensor) -> torch.Tensor:
        align = False if self.deep_upsample in {"bilinear", "bicubic"} else None
        return F.interpolate(features, size=self.grid_size, mode=self.deep_upsample, align_corners=align)

    def _vit_features(self, images: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        assert self.vit is not None
        return self.vit.forward_intermediates(
            images,
            indices=indices,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )

    def _deep_pair(self, last: torch.Tensor, input_side: bool, target_side: bool) -> list[torch.Tensor]:
        """The deep branch's input-side and/or target-side maps on the grid, from the last CNN tap."""
        assert self.deep_stage is not None
        blocks = list(self.deep_stage.children())
        shallow = last.contiguous(memory_format=torch.channels_last)  # faster on CPU, see FeatureExtractor
        for block in blocks[: self.deep_input_blocks]:
            shallow = block(shallow)
        outputs = [self._to_grid(shallow)] if input_side else []
        if target_side:
            deep = shallow
            for block in blocks[self.deep_input_blocks :]:
                deep = block(deep)
            outputs.append(self._to_grid(deep))
        return outputs

    @torch.no_grad()
    def input_features(self, images: torch.Tensor) -> torch.Tensor:
        """Input-side fused features ``(B, C, h, w)`` only (the damaged image's side in training).

        Stops at the input-side deep tap: the target-side blocks are not computed.
        """
        return self._one_side(images, input_side=True)

    @torch.no_grad()
    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """Target-side fused features ``(B, C, h, w)`` only (the intact image's side in training)."""
        return self._one_side(images, input_side=False)

    def _one_side(self, images: torch.Tensor, input_side: bool) -> torch.Tensor:
        self.eval()
        parts: list[torch.Tensor] = []
        if self.cnn is not None:
            low, last = self._cnn_features(images)
            parts.append(low)
            if self.deep_stage is not None:
                parts.extend(self._deep_pair(last, input_side=input_side, target_side=not input_side))
        if self.vit is not None:
            parts.extend(self._vit_features(images, [self.vit_input_index if input_side else self.vit_target_index]))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        damaged: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-side and target-side fused features, each ``(B, C, h, w)``.

        Args:
            images: Normalised intact (training) or test images ``(B, 3, H, W)``.
            damaged: Normalised damaged copies (training); ``None`` takes both sides from ``images``.

        Returns:
            ``(F_in, F_tgt)``: input side from ``damaged`` (or ``images``), target side from ``images``.
        """
        if damaged is not None:
            return self.input_features(damaged), self.target_features(images)
        self.eval()
        inputs: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        if self.cnn is not None:
            low, last = self._cnn_features(images)
            inputs.append(low)
            targets.append(low)
            if self.deep_stage is not None:
                shallow, deep = self._deep_pair(last, input_side=True, target_side=True)
                inputs.append(shallow)
                targets.append(deep)
        if self.vit is not None:
            if self.vit_input_index == self.vit_target_index:
                (shallow,) = self._vit_features(images, [self.vit_input_index])
                deep = shallow
            else:
                shallow, deep = self._vit_features(images, [self.vit_input_index, self.vit_target_index])
            inputs.append(shallow)
            targets.append(deep)
        return torch.cat(inputs, dim=1), torch.cat(targets, dim=1)
