"""PyTorch model of MLDFR: fused frozen features -> trained restorer -> restoration-error map.

In training mode, :class:`MLDFRModel` takes the intact images and their damaged copies and returns
``(restored, target)``: the restorer's output on the damaged image's input-side features and the
intact image's target-side features, for :class:`~anomalib_ext.models.mldfr.loss.MLDFRLoss`. In
eval mode it takes only test images and returns ``InferenceBatch(pred_score, anomaly_map)``: this
path (normalisation, features, restorer, map, smoothing, score) is what gets exported; it has no
randomness and no data-dependent control flow.

Example:
    >>> import torch
    >>> from anomalib_ext.models.mldfr.torch_model import MLDFRModel
    >>> model = MLDFRModel(cnn_backbone="efficientnet_lite0", cnn_layers=[1, 2, 3],
    ...                    vit_backbone=None, deep_branch=True, input_size=(64, 64),
    ...                    num_blocks=2, gaussian_sigma=2.0, pre_trained=False).eval()
    >>> output = model(torch.rand(2, 3, 64, 64))
    >>> output.anomaly_map.shape, output.pred_score.shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2, 1]))

See Also:
    - :mod:`anomalib_ext.models.mldfr.lightning_model`: the Lightning module.
    - :mod:`anomalib_ext.models.mldfr.feature_extractor`, :mod:`~anomalib_ext.models.mldfr.restorer`,
      :mod:`~anomalib_ext.models.mldfr.anomaly_map`: the components.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from anomalib_ext.models.mldfr.anomaly_map import AnomalyMapGenerator
from anomalib_ext.models.mldfr.feature_extractor import MultilevelFeatureExtractor
from anomalib_ext.models.mldfr.restorer import FeatureRestorer

FEATURE_NORMS = ("none", "layernorm")
SCORE_AGGREGATIONS = ("max", "mean", "topk")
SCORE_AGAINST = ("target", "input")


class MLDFRModel(nn.Module):
    """MLDFR network: :class:`MultilevelFeatureExtractor` + :class:`FeatureRestorer` + map.

    Images enter in [0, 1] pixel space (the damage is defined there) and are normalised here with
    the backbones' ImageNet statistics, so the exported model also takes [0, 1] images.

    Args:
        cnn_backbone, cnn_layers, cnn_pool, vit_backbone, vit_input_block, vit_target_block,
        deep_branch, deep_input_tap, deep_target_tap, deep_upsample, pre_trained: see
            :class:`MultilevelFeatureExtractor`.
        input_size: ``(H, W)`` of the model input; fixes the token count of the restorer.
        num_blocks, pos_embed_init_std, final_norm, restorer_dim: see :class:`FeatureRestorer`.
        num_heads, mlp_ratio, qkv_bias, norm_eps, dropout, attention_type, layer_scale,
        layer_scale_init, layer_scale_on_attention: see
            :class:`~anomalib_ext.models.mldfr.restorer.RestorationBlock`.
        feature_norm: A5: ``"none"`` or ``"layernorm"`` (parameter-free, per token, both sides).
        normalize: A30: normalise the [0, 1] input with ImageNet mean/std inside the model.
        gaussian_sigma, map_channel_reduction, upsample_align_corners: see :class:`AnomalyMapGenerator`.
        score_aggregation: A29: image score from the map: ``"max"``, ``"mean"`` or ``"topk"``.
        score_topk: A29: fraction of the highest map values averaged when ``score_aggregation="topk"``.
        score_against: A3: compare the restored features with the ``"target"`` side (default) or
            the ``"input"`` side of the test image.
    """

    def __init__(
        self,
        cnn_backbone: str | None = "resnet18.tv_in1k",
        cnn_layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        cnn_pool: str = "max",
        vit_backbone: str | None = "cait_xs24_384.fb_dist_in1k",
        vit_input_block: int = 5,
        vit_target_block: int = 15,
        deep_branch: bool = False,
        deep_input_tap: str = "blocks.5.0",
        deep_target_tap: str = "blocks.5.3",
        deep_upsample: str = "bilinear",
        input_size: tuple[int, int] = (384, 384),
        pre_trained: bool = True,
        num_blocks: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
        attention_type: str = "standard",
        layer_scale: bool = True,
        layer_scale_init: float = 1e-5,
        layer_scale_on_attention: bool = False,
        pos_embed_init_std: float = 0.02,
        final_norm: bool = False,
        restorer_dim: int | None = None,
        feature_norm: str = "none",
        normalize: bool = True,
        gaussian_sigma: float = 8.0,
        map_channel_reduction: str = "sum",
        upsample_align_corners: bool = False,
        score_aggregation: str = "max",
        score_topk: float = 0.01,
        score_against: str = "target",
    ) -> None:
        super().__init__()
        for name, value, accepted in (
            ("feature_norm", feature_norm, FEATURE_NORMS),
            ("score_aggregation", score_aggregation, SCORE_AGGREGATIONS),
            ("score_against", score_against, SCORE_AGAINST),
        ):
            if value not in accepted:
                msg = f"{name}={value!r} is invalid: accepted values are {accepted}."
                raise ValueError(msg)
        if not 0.0 < score_topk <= 1.0:
            msg = f"score_topk={score_topk!r} is out of range: accepted range is (0, 1]."
            raise ValueError(msg)
        self.input_size = tuple(int(side) for side in input_size)
        self.feature_extractor = MultilevelFeatureExtractor(
            cnn_backbone=cnn_backbone,
            cnn_layers=cnn_layers,
            cnn_pool=cnn_pool,
            vit_backbone=vit_backbone,
            vit_input_block=vit_input_block,
            vit_target_block=vit_target_block,
            deep_branch=deep_branch,
            deep_input_tap=deep_input_tap,
            deep_target_tap=deep_target_tap,
            deep_upsample=deep_upsample,
            input_size=self.input_size,
            pre_trained=pre_trained,
        )
        grid_height, grid_width = self.feature_extractor.grid_size
        self.restorer = FeatureRestorer(
            dim=self.feature_extractor.num_channels,
            num_tokens=grid_height * grid_width,
            num_blocks=num_blocks,
            pos_embed_init_std=pos_embed_init_std,
            final_norm=final_norm,
            restorer_dim=restorer_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            norm_eps=norm_eps,
            dropout=dropout,
            attention_type=attention_type,
            layer_scale=layer_scale,
            layer_scale_init=layer_scale_init,
            layer_scale_on_attention=layer_scale_on_attention,
        )
        self.anomaly_map_generator = AnomalyMapGenerator(
            input_size=self.input_size,
            sigma=gaussian_sigma,
            map_channel_reduction=map_channel_reduction,
            align_corners=upsample_align_corners,
        )
        self.feature_norm = feature_norm
        self.normalize = normalize
        self.score_aggregation = score_aggregation
        self.score_topk = score_topk
        self.score_against = score_against
        # Constants, not training state: kept out of the state dict, but moved and exported with the model.
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std if self.normalize else images

    def _normalise_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.feature_norm == "none":
            return features
        return F.layer_norm(features.transpose(1, -1), (features.shape[1],)).transpose(1, -1)

    def _score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        if self.score_aggregation == "max":
            return torch.amax(anomaly_map, dim=(-2, -1))
        if self.score_aggregation == "mean":
            return anomaly_map.mean(dim=(-2, -1))
        count = max(1, int(self.score_topk * self.input_size[0] * self.input_size[1]))
        return anomaly_map.flatten(2).topk(count, dim=2).values.mean(dim=2)

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """Target-side features ``(B, C, h, w)`` of intact ``images`` in [0, 1] (frozen: cacheable per image)."""
        return self._normalise_features(self.feature_extractor.target_features(self._prepare(images)))

    def forward(
        self,
        images: torch.Tensor,
        damaged: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | InferenceBatch:
        """Training: ``(restored, target)`` features; eval: ``InferenceBatch(pred_score, anomaly_map)``.

        Args:
            images: Intact (training) or test images ``(B, 3, H, W)`` in [0, 1].
            damaged: Damaged copies of ``images`` in [0, 1] (training only).
            targets: Training only: the target-side features of ``images`` when already known
                (:meth:`target_features`, e.g. from a cache); ``None`` computes them.

        Returns:
            In training mode, the restored input-side features of ``damaged`` and the target-side
            features of ``images``, both ``(B, C, h, w)``. In eval mode, the smoothed anomaly map
            ``(B, 1, H, W)`` and the image score ``(B, 1)``.
        """
        if self.training:
            if damaged is None:
                msg = "MLDFRModel needs the damaged images in training mode."
                raise ValueError(msg)
            inputs = self._normalise_features(self.feature_extractor.input_features(self._prepare(damaged)))
            if targets is None:
                targets = self.target_features(images)
            return self.restorer(inputs), targets

        inputs, targets = self.feature_extractor(self._prepare(images))
        inputs, targets = self._normalise_features(inputs), self._normalise_features(targets)
        restored = self.restorer(inputs)
        reference = targets if self.score_against == "target" else inputs
        anomaly_map = self.anomaly_map_generator(restored, reference)
        return InferenceBatch(pred_score=self._score(anomaly_map), anomaly_map=anomaly_map)
