"""MLDFR: A Multilevel Features Restoration Method Based on Damaged Images for Anomaly Detection and Localization.

MLDFR damages every normal training image with about 180 small blurred, black or white squares and
trains a transformer (the feature restorer, FR) to map the frozen multilevel features of the damaged
image (ResNet-18 layer1-3 + CaiT-XS24 block 5) back to the features of the intact image (ResNet-18
layer1-3 + CaiT block 15). At test time the restorer, which only ever learned to produce normal
content, "repairs" defects: the squared restoration error against the image's own target features,
upsampled and smoothed, is the anomaly map, and its maximum the image score.

The paper's backbones (``resnet18.tv_in1k`` + ``cait_xs24_384.fb_dist_in1k`` at 384 px) are the
defaults. Offline, with only EfficientNet-Lite weights at hand, ``vit_backbone=None`` and
``deep_branch=True`` give a CNN-only variant with the same fusion and restoration structure (see the
README and ``configs/model/mldfr_cpu.yaml``).

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.models import MLDFR
    >>> model = MLDFR()                      # paper configuration, 384 x 384
    >>> engine = Engine(max_epochs=500)
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle", train_batch_size=15))  # doctest: +SKIP

Paper: Guo, Jiang, Huang, Cheng, Gong, IEEE Trans. Ind. Informat., 2024,
https://doi.org/10.1109/TII.2023.3292904

See Also:
    - :class:`anomalib_ext.models.mldfr.torch_model.MLDFRModel`: the PyTorch model.
    - :class:`anomalib_ext.models.mldfr.loss.MLDFRLoss`: the loss (eqs. 4-6).
    - :class:`anomalib_ext.augment.RandomPatchDamage`: the training damage.
    - :class:`anomalib.models.ReverseDistillation`: the closest anomalib built-in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import CenterCrop, Compose, InterpolationMode, Resize

from anomalib_ext.augment import RandomPatchDamage, rank_generator
from anomalib_ext.models.components import FrozenFeatureCache
from anomalib_ext.models.defaults import pro_evaluator, reject_normalize
from anomalib_ext.models.mldfr.loss import MLDFRLoss
from anomalib_ext.models.mldfr.torch_model import MLDFRModel
from anomalib_ext.post_processing import OrderPreservingPostProcessor

logger = logging.getLogger(__name__)

PAPER_IMAGE_SIZE = (384, 384)
RESIZE_INTERPOLATIONS = ("bilinear", "bicubic")
LR_STEP_INTERVALS = ("epoch", "step")


class MLDFR(AnomalibModule):
    """MLDFR Lightning module: damaged-image feature restoration.

    Paper defaults everywhere (section 4 of the spec); ``A<n>`` marks a spec ASSUMPTION.

    Args:
        cnn_backbone: A1: CNN of the low-level features (paper ``"resnet18.tv_in1k"``); ``None``
            for a transformer-only model (Table VII "CaiT 15-5").
        cnn_layers: CNN taps, pooled to the stride-16 grid (paper ``layer1-3``).
        cnn_pool: A4: pooling that aligns the CNN taps, ``"max"`` (paper) or ``"avg"`` (public code).
        vit_backbone: Transformer of the deep pair (paper ``"cait_xs24_384.fb_dist_in1k"``);
            ``None`` for the CNN-only variant (offline config, Table VII "R18 1+2+3").
        vit_input_block: A2: 1-based CaiT block for the damaged/test input side (paper 5).
        vit_target_block: A2: 1-based CaiT block for the intact target side (paper 15).
        deep_branch: A31: offline stand-in for CaiT: shallow/deep blocks of the CNN stage after the
            last tap (not in the paper; default off).
        deep_input_tap: A31: input-side block of the deep branch (``"blocks.5.0"`` of EfficientNet-Lite).
        deep_target_tap: A31: target-side block of the deep branch (``"blocks.5.3"``).
        deep_upsample: A31: interpolation bringing the deep branch to the grid (``"bilinear"``).
        pre_trained: Real ImageNet weights through ``anomalib_ext.backbones`` (``False`` only for tests).
        num_blocks: Restoration blocks in FR (paper 8).
        num_heads: A8: attention heads of FR (8; must divide the fused width).
        mlp_ratio: A9: MLP width ratio of FR blocks (4).
        qkv_bias: A9: bias of the qkv projection (``True``).
        norm_eps: A9: LayerNorm epsilon (1e-6).
        dropout: A9: dropout in FR (0).
        attention_type: A10: ``"standard"`` (the paper: ViT self-attention, "based on ViT" with only
            LayerScale taken from CaiT), ``"talking_heads"`` (the public code's CaiT attention; about
            twice the restorer's CPU cost) or ``"none"`` (Table IX "MLP").
        layer_scale: A11: diagonal gamma on the FFN branch (eq. 3; Table IX "Diag(gamma)").
        layer_scale_init: A12: gamma init (1e-5).
        layer_scale_on_attention: A11: also scale the attention branch (``False``, eq. 3).
        pos_embed_init_std: A13: std of FR's learnable position encoding init (0.02).
        final_norm: A14: LayerNorm after FR's last block (``False``).
        restorer_dim: A6: FR width; ``None`` = the fused width (paper); an integer adds projections.
        feature_norm: A5: ``"none"`` (paper) or ``"layernorm"`` on the fused features.
        normalize: A30: ImageNet normalisation inside the model (the damage works in [0, 1]).
        center_crop: A25: default pre-processor resizes the short side and centre-crops (public code)
            instead of squashing (paper). Used only when ``pre_processor=True``.
        resize_interpolation: A7: interpolation of the default pre-processor's Resize
            (``"bilinear"``). Used only when ``pre_processor=True``.
        damage_num_squares: A15: damaged squares per image (paper "about 180").
        damage_side_fraction: A15: square side as a fraction of the input side (paper "about 1/24").
        damage_placement: A16: ``"uniform"`` corners (overlaps allowed) or ``"grid"`` cells.
        damage_modes: A17/A19: damage modes drawn once per image (paper blur, mask, white).
        damage_probability: A17: fraction of training images damaged (1.0).
        damage_blur_sigma_fraction: A18: blur sigma as a fraction of the input side (9/384: "kernel 9").
        damage_blur_scope: A18: blur each square's own pixels (``"square"``) or the whole image (``"image"``).
        mask_value: A19: fill of ``"mask"`` squares in [0, 1] space (0.0, black).
        white_value: A19: fill of ``"white"`` squares (1.0).
        damage_seed: Seed of the damage generator; each DDP rank adds its global rank (T20).
            ``None`` uses torch's initial seed (set by ``seed_everything``).
        loss_lambda: A21: weight of the cosine term (paper 140, eq. 6).
        loss_channel_reduction: A20: ``"mean"`` over channels (eqs. 4-5) or ``"sum"`` (public code).
        cosine_axis: A20: ``"spatial"`` (per-channel cosine, eq. 5) or ``"channel"`` (per-token).
        loss_use_mse: Table X: keep the MSE term (``True``).
        gaussian_sigma: A28: sigma in pixels of the map smoothing (paper "kernel 8" at 384 px).
        map_channel_reduction: A26: ``"sum"`` (eq. 8) or ``"mean"`` over channels.
        upsample_align_corners: A27: ``align_corners`` of the map upsampling (``False``).
        score_aggregation: A29: ``"max"`` of the map (public code), ``"mean"`` or ``"topk"``.
        score_topk: A29: fraction of top map values averaged for ``"topk"`` (0.01).
        score_against: A3: compare restored features with the test image's ``"target"`` side or ``"input"`` side.
        lr: Adam learning rate (paper 1e-3).
        betas: A22: Adam betas ((0.9, 0.999)).
        weight_decay: A22: Adam weight decay (0.0).
        lr_step_size: StepLR step in ``lr_step_interval`` units (paper 30 epochs).
        lr_gamma: StepLR decay factor (paper 0.8).
        lr_step_interval: A23: ``"epoch"`` (paper) or ``"step"`` (public code).
        pre_processor: Pre-processor or ``True`` for the default (Resize only to 384 px; the model
            normalises). Set another size with ``MLDFR.configure_pre_processor(image_size=...)``.
        post_processor: Post-processor or ``True`` for the default one-class post-processor.
        evaluator: Evaluator or ``True`` for image/pixel AUROC and F1 plus AUPRO (FPR <= 0.3).
        visualizer: Visualizer or ``True`` for the default image visualizer.
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
        center_crop: bool = False,
        resize_interpolation: str = "bilinear",
        damage_num_squares: int = 180,
        damage_side_fraction: float = 1 / 24,
        damage_placement: str = "uniform",
        damage_modes: Sequence[str] = ("blur", "mask", "white"),
        damage_probability: float = 1.0,
        damage_blur_sigma_fraction: float = 9 / 384,
        damage_blur_scope: str = "square",
        mask_value: float = 0.0,
        white_value: float = 1.0,
        damage_seed: int | None = None,
        loss_lambda: float = 140.0,
        loss_channel_reduction: str = "mean",
        cosine_axis: str = "spatial",
        loss_use_mse: bool = True,
        gaussian_sigma: float = 8.0,
        map_channel_reduction: str = "sum",
        upsample_align_corners: bool = False,
        score_aggregation: str = "max",
        score_topk: float = 0.01,
        score_against: str = "target",
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        lr_step_size: int = 30,
        lr_gamma: float = 0.8,
        lr_step_interval: str = "epoch",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if resize_interpolation not in RESIZE_INTERPOLATIONS:
            msg = (
                f"resize_interpolation={resize_interpolation!r} is invalid: "
                f"accepted values are {RESIZE_INTERPOLATIONS}."
            )
            raise ValueError(msg)
        if lr_step_interval not in LR_STEP_INTERVALS:
            msg = f"lr_step_interval={lr_step_interval!r} is invalid: accepted values are {LR_STEP_INTERVALS}."
            raise ValueError(msg)
        if pre_processor is True:
            pre_processor = self._resize_pre_processor(PAPER_IMAGE_SIZE, center_crop, resize_interpolation)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self._model_kwargs: dict[str, Any] = {
            "cnn_backbone": cnn_backbone,
            "cnn_layers": list(cnn_layers),
            "cnn_pool": cnn_pool,
            "vit_backbone": vit_backbone,
            "vit_input_block": vit_input_block,
            "vit_target_block": vit_target_block,
            "deep_branch": deep_branch,
            "deep_input_tap": deep_input_tap,
            "deep_target_tap": deep_target_tap,
            "deep_upsample": deep_upsample,
            "pre_trained": pre_trained,
            "num_blocks": num_blocks,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "norm_eps": norm_eps,
            "dropout": dropout,
            "attention_type": attention_type,
            "layer_scale": layer_scale,
            "layer_scale_init": layer_scale_init,
            "layer_scale_on_attention": layer_scale_on_attention,
            "pos_embed_init_std": pos_embed_init_std,
            "final_norm": final_norm,
            "restorer_dim": restorer_dim,
            "feature_norm": feature_norm,
            "normalize": normalize,
            "gaussian_sigma": gaussian_sigma,
            "map_channel_reduction": map_channel_reduction,
            "upsample_align_corners": upsample_align_corners,
            "score_aggregation": score_aggregation,
            "score_topk": score_topk,
            "score_against": score_against,
        }
        self.model = self._build_model()
        self.loss = MLDFRLoss(
            loss_lambda=loss_lambda,
            channel_reduction=loss_channel_reduction,
            cosine_axis=cosine_axis,
            use_mse=loss_use_mse,
        )
        self.damage = RandomPatchDamage(
            num_squares=damage_num_squares,
            side_fraction=damage_side_fraction,
            placement=damage_placement,
            modes=tuple(damage_modes),
            probability=damage_probability,
            blur_sigma_fraction=damage_blur_sigma_fraction,
            blur_scope=damage_blur_scope,
            mask_value=mask_value,
            white_value=white_value,
        )
        self.damage_seed = damage_seed
        self.damage_generator: torch.Generator | None = None
        # The intact image's target-side features come from frozen backbones: computed once per
        # training image (keyed by path, checked against the pixels; off by itself under augmentations).
        self.target_cache = FrozenFeatureCache()
        self.lr = lr
        self.betas = tuple(betas)
        self.weight_decay = weight_decay
        self.lr_step_size = lr_step_size
        self.lr_gamma = lr_gamma
        self.lr_step_interval = lr_step_interval

    def _build_model(self) -> MLDFRModel:
        input_size = self.input_size
        if input_size is None:
            msg = "MLDFR needs a fixed input size: give it a pre-processor with a Resize (or pre_processor=True)."
            raise ValueError(msg)
        return MLDFRModel(input_size=tuple(input_size), **self._model_kwargs)

    @staticmethod
    def _resize_pre_processor(
        image_size: tuple[int, int],
        center_crop: bool = False,
        resize_interpolation: str = "bilinear",
    ) -> PreProcessor:
        interpolation = InterpolationMode(resize_interpolation)
        if center_crop:
            transform = Compose(
                [
                    Resize(min(image_size), interpolation=interpolation, antialias=True),
                    CenterCrop(image_size),
                ]
            )
        else:
            transform = Compose([Resize(image_size, interpolation=interpolation, antialias=True)])
        return PreProcessor(transform=transform)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize-only pre-processor (the model normalises internally, after the pixel-space damage).

        Args:
            image_size: Target ``(H, W)``; defaults to the paper's ``(384, 384)``. Sides must be
                multiples of 16 (the token grid).

        Returns:
            PreProcessor with ``Resize(image_size, antialias=True)``.
        """
        return cls._resize_pre_processor(tuple(image_size or PAPER_IMAGE_SIZE))

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """The order-preserving post-processor: metrics see no clamping ties (anomalib_ext.post_processing)."""
        return OrderPreservingPostProcessor()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Default anomalib metrics plus the papers' PRO (``AUPRO`` up to FPR 0.3)."""
        return pro_evaluator(fpr_limit=0.3)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the pre-processor, then rebuild the network if the saved input size differs.

        The restorer's position encoding has one entry per token, so its size follows the input
        size saved with the pre-processor; ``load_from_checkpoint`` first builds the model with
        the default size.
        """
        super().on_load_checkpoint(checkpoint)
        if self.input_size is not None and tuple(self.input_size) != tuple(self.model.input_size):
            self.model = self._build_model().to(self.device)

    def on_train_start(self) -> None:
        """Reject a Normalize in the pre-processor: the damage works in [0, 1] pixel space (T7)."""
        reject_normalize(
            self.pre_processor, "MLDFR damages images in [0, 1] pixel space and normalises inside the model."
        )

    def on_fit_start(self) -> None:
        """Create the damage generator, seeded differently on every DDP rank (T20)."""
        self.damage_generator = rank_generator(self.damage_seed, self.global_rank, self.device)

    def on_train_end(self) -> None:
        """Give back the memory of the target-feature cache."""
        self.target_cache.clear()

    def on_train_epoch_start(self) -> None:
        """Re-apply the frozen backbones' eval mode (Lightning restores module modes after validation)."""
        self.model.feature_extractor.eval()

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Damage the batch in pixel space, restore its features, return the loss."""
        del args, kwargs  # These variables are not used.
        damaged, _ = self.damage(batch.image, generator=self.damage_generator)
        # only the damaged side changes from epoch to epoch; the intact side is encoded once per image
        (targets,) = self.target_cache(
            lambda images: [self.model.target_features(images)], batch.image, getattr(batch, "image_path", None)
        )
        restored, target = self.model(batch.image, damaged, targets=targets)
        loss = self.loss(restored, target)
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, logger=True, sync_dist=True)
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly map and score of the batch."""
        del args, kwargs  # These variables are not used.
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam on the restorer only, StepLR (paper: 1e-3, x0.8 every 30 epochs)."""
        optimizer = torch.optim.Adam(
            self.model.restorer.parameters(),
            lr=self.lr,
            betas=self.betas,
            weight_decay=self.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_step_size, gamma=self.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_step_interval}}

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping and no sanity validation, as anomalib's reverse distillation and DRAEM."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """MLDFR trains on normal images only."""
        return LearningType.ONE_CLASS
