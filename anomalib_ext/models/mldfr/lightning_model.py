"""MLDFR: A Multilevel Features Restoration Method Based on Damaged Images for Anomaly Detection and Localization.

MLDFR damages every normal training image with about 180 small blurred, black or white squares and
trains a transformer (the feature restorer, FR) to map the frozen multilevel features of the damaged
image (ResNet-18 layer1-3 + CaiT-XS24 block 5) back to the features of the intact image (ResNet-18
layer1-3 + CaiT block 15). At test time the restorer, which only ever learned to produce normal
content, "repairs" defects: the squared restoration error against the image's own target features,
upsampled and smoothed, is the anomaly map, and its maximum the image score.

The paper's backbones (``resnet18.tv_in1k`` + ``cait_xs24_384.fb_dist_in1k`` at 384 px) are the
defaults. Offline, with only EfficientNet-Lite weights at hand, ``vit_backbone=None`` gives the
paper's CNN-only variant (Table VII "R18 1+2+3"; see the README and ``configs/model/mldfr_cpu.yaml``).
The knobs a user tunes are flat arguments; every other ablation and spec assumption sits in the
groups of :mod:`anomalib_ext.models.mldfr.config` (``--model.damage.num_squares 90``).

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.models import MLDFR
    >>> model = MLDFR()  # paper configuration, 384 x 384  # doctest: +SKIP
    >>> engine = Engine(max_epochs=500)  # doctest: +SKIP
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle", train_batch_size=15))  # doctest: +SKIP

Paper: Guo, Jiang, Huang, Cheng, Gong, IEEE Trans. Ind. Informat., 2024,
https://doi.org/10.1109/TII.2023.3292904

See Also:
    - :class:`anomalib_ext.models.mldfr.torch_model.MLDFRModel`: the PyTorch model.
    - :class:`anomalib_ext.models.mldfr.loss.MLDFRLoss`: the loss (eqs. 4-6).
    - :mod:`anomalib_ext.models.mldfr.config`: the ablation groups.
    - :class:`anomalib_ext.augment.RandomPatchDamage`: the training damage.
    - :class:`anomalib.models.ReverseDistillation`: the closest anomalib built-in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import CenterCrop, Compose, InterpolationMode, Resize

from anomalib_ext.augment import RandomPatchDamage
from anomalib_ext.models.components import AnomalibExtModule, FrozenFeatureCache, group_arguments
from anomalib_ext.models.defaults import reject_normalize

from .config import AnomalyMapConfig, DamageConfig, FeatureConfig, RestorerConfig, TrainingConfig
from .loss import MLDFRLoss
from .torch_model import MLDFRModel

PAPER_IMAGE_SIZE = (384, 384)

logger = logging.getLogger(__name__)


class MLDFR(AnomalibExtModule, AnomalibModule):
    """MLDFR Lightning module: damaged-image feature restoration.

    Paper defaults everywhere (section 4 of the spec); ``A<n>`` marks a spec ASSUMPTION.

    Args:
        cnn_backbone: A1: CNN of the low-level features (paper ``"resnet18.tv_in1k"``); ``None``
            for a transformer-only model (Table VII "CaiT 15-5").
        cnn_layers: CNN taps (timm feature names or indices), pooled to the stride-16 grid (paper
            ``layer1-3``); a value that is not a tap of ``cnn_backbone`` is an error naming the accepted taps.
        vit_backbone: Transformer of the deep pair (paper ``"cait_xs24_384.fb_dist_in1k"``);
            ``None`` for the CNN-only variant (offline config, Table VII "R18 1+2+3").
        pre_trained: Real ImageNet weights through ``anomalib_ext.backbones`` (``False`` only for tests).
        lr: Adam learning rate (paper 1e-3).
        sigma: A28: Gaussian smoothing of the anomaly map in pixels (paper "kernel 8" at 384 px; scale it
            with the input size, e.g. 5.33 at 256 px).
        features: Fusion, CaiT blocks, offline deep branch and input settings
            (:class:`~anomalib_ext.models.mldfr.config.FeatureConfig`).
        restorer: The restorer FR: blocks (paper 8), heads, attention, LayerScale
            (:class:`~anomalib_ext.models.mldfr.config.RestorerConfig`).
        damage: The training damage (:class:`~anomalib_ext.models.mldfr.config.DamageConfig`).
        training: Loss (lambda 140), Adam and StepLR (30 epochs, x0.8)
            (:class:`~anomalib_ext.models.mldfr.config.TrainingConfig`).
        anomaly_map: Map reduction and image score (:class:`~anomalib_ext.models.mldfr.config.AnomalyMapConfig`).
        **components: anomalib's ``pre_processor``, ``post_processor``, ``evaluator`` and ``visualizer``
            (:class:`~anomalib.models.components.AnomalibModule`); ``True``, the default, takes this
            model's ``configure_*`` method, for the pre-processor a resize only, to 384 px (the model
            normalises; another size: ``MLDFR.configure_pre_processor(image_size=...)``).
    """

    frozen_modules = ("feature_extractor",)
    #: INT8_PTQ quantises the convolutions and the restorer's ``MatMul``s (most of the weights and of the
    #: time); LayerNorm, softmax, the squared error and the map stay in float (see
    #: ``AnomalibExtModule._post_training_quantization_ov``). Quantising every type, as anomalib does, moved
    #: the raw image scores of a model trained on the behaviour data by 0.56 of their f32 range (this: 0.098;
    #: ``tests/integration/test_int8.py``), and on ELPV mono, with the former CNN-only features, gave image
    #: AUROC 0.828 against this 0.838 (f32 0.830; docs/deployment.md).
    int8_quantised_types = ("Convolution", "GroupConvolution", "MatMul")

    @group_arguments
    def __init__(
        self,
        cnn_backbone: str | None = "resnet18.tv_in1k",
        cnn_layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        vit_backbone: str | None = "cait_xs24_384.fb_dist_in1k",
        pre_trained: bool = True,
        lr: float = 1e-3,
        sigma: float = 8.0,
        features: FeatureConfig = FeatureConfig(),
        restorer: RestorerConfig = RestorerConfig(),
        damage: DamageConfig = DamageConfig(),
        training: TrainingConfig = TrainingConfig(),
        anomaly_map: AnomalyMapConfig = AnomalyMapConfig(),
        **components: Any,
    ) -> None:
        # the default pre-processor replaced after the call: editing ``components``, or reading it with
        # ``.get``, makes jsonargparse type the components ``Any`` in ``--help``
        default_pre_processor = "pre_processor" not in components or components["pre_processor"] is True
        super().__init__(**components)
        if default_pre_processor:
            self.pre_processor = self._resize_pre_processor(
                PAPER_IMAGE_SIZE, features.center_crop, features.resize_interpolation
            )
        self._model_kwargs: dict[str, Any] = {
            "cnn_backbone": cnn_backbone,
            "cnn_layers": list(cnn_layers),
            "vit_backbone": vit_backbone,
            "pre_trained": pre_trained,
            "sigma": sigma,
            "features": features,
            "restorer": restorer,
            "anomaly_map": anomaly_map,
        }
        self.model = self._build_model()
        self.loss = MLDFRLoss(
            loss_lambda=training.loss_lambda,
            channel_reduction=training.channel_reduction,
            cosine_axis=training.cosine_axis,
            use_mse=training.use_mse,
        )
        self.damage = RandomPatchDamage(**asdict(damage))
        # The intact image's target-side features come from frozen backbones: computed once per
        # training image (keyed by path, checked against the pixels; off by itself under augmentations).
        self.target_cache = FrozenFeatureCache()
        self.lr = lr
        self.training_config = training

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """The ablation groups, should a checkpoint hold them as objects (``weights_only`` loading)."""
        return (FeatureConfig, RestorerConfig, DamageConfig, TrainingConfig, AnomalyMapConfig)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the groups as plain mappings: the checkpoint loads with a bare ``torch.load(weights_only=True)``.

        The constructor turns the mappings back into the groups, so ``load_from_checkpoint`` rebuilds
        the same model.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint["hyper_parameters"] = {
            key: asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
            for key, value in checkpoint.get("hyper_parameters", {}).items()
        }

    def _build_model(self) -> MLDFRModel:
        input_size = self.fixed_input_size("its restorer's token grid is built for it")
        return MLDFRModel(input_size=input_size, **self._model_kwargs)

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
        """Reject a Normalize in the pre-processor (the damage works in [0, 1] pixel space, T7); reach ``min_steps``."""
        reject_normalize(
            self.pre_processor, "MLDFR damages images in [0, 1] pixel space and normalises inside the model."
        )
        self._reach_min_steps()

    def _reach_min_steps(self) -> None:
        """Add whole epochs until ``training.min_steps`` optimiser steps, stretching an epoch-based lr schedule.

        The restorer learns per optimiser step: 6 epochs of batch 15 are 102 steps on 250 images but
        18 on 40, where it is half-trained (README, "Small training sets").
        """
        min_steps = self.training_config.min_steps
        fit_loop = self.trainer.fit_loop
        epochs, batches = fit_loop.max_epochs, self.trainer.num_training_batches
        if not min_steps or epochs is None or epochs < 1 or not math.isfinite(batches) or batches < 1:
            return
        steps_per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
        needed = math.ceil(min_steps / steps_per_epoch)
        if needed <= epochs:
            return
        fit_loop.max_epochs = needed
        if self.training_config.lr_step_interval == "epoch":
            scheduler = self.lr_schedulers()
            scheduler.step_size = max(1, round(scheduler.step_size * needed / epochs))
        logger.info(
            "MLDFR: %d steps per epoch, training %d epochs instead of %d to reach training.min_steps=%d.",
            steps_per_epoch,
            needed,
            epochs,
            min_steps,
        )

    def on_train_end(self) -> None:
        """Give back the memory of the target-feature cache."""
        self.target_cache.clear()

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Damage the batch in pixel space, restore its features, return the loss."""
        del args, kwargs  # These variables are not used.
        damaged, _ = self.damage(batch.image, generator=self.generator)
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
        config = self.training_config
        optimizer = torch.optim.Adam(
            self.model.restorer.parameters(),
            lr=self.lr,
            betas=tuple(config.betas),
            weight_decay=config.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_size, gamma=config.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": config.lr_step_interval}}
