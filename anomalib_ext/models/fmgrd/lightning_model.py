"""FMGRD: Unsupervised Industrial Anomaly Detection Based on Feature Mask Generation and Reverse Distillation.

Reverse Distillation (a frozen ImageNet teacher, a one-class bottleneck and a mirrored student decoder)
with three changes: a multi-scale feature fusion (MSFF) followed by an attention block (SCSAtt = SCConv +
1x1 conv + SimAM) before the one-class embedding; a feature mask generation module (FMM) per student
level that zeroes random positions and regenerates the teacher feature; and a per-pixel cosine loss
(eq. 13). At test time the per-level ``1 - cos`` maps are upsampled, summed and smoothed; their maximum
is the image score.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.models import FMGRD
    >>> model = FMGRD(backbone="wide_resnet50_2.tv_in1k")  # doctest: +SKIP
    >>> engine = Engine(max_epochs=200)  # doctest: +SKIP
    >>> engine.fit(model=model, datamodule=MVTecAD(category="bottle", train_batch_size=16))  # doctest: +SKIP

Paper: Qi, Chai, Ye, Chinese Journal of Information Fusion 1(2):160-174, 2024.

See Also:
    :class:`anomalib_ext.models.fmgrd.torch_model.FmgrdModel`: the PyTorch model.
    :class:`anomalib_ext.models.fmgrd.loss.FmgrdLoss`: the loss (eq. 13).
    :mod:`anomalib_ext.models.fmgrd.config`: the ablation groups.
    :class:`anomalib.models.ReverseDistillation`: the built-in baseline it extends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.models.components import AnomalibModule
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_ext.models.components import AnomalibExtModule, FrozenFeatureCache, group_arguments

from .config import AttentionConfig, BottleneckConfig, FMMConfig, ScoringConfig, TrainingConfig
from .loss import FmgrdLoss
from .torch_model import FmgrdModel


class FMGRD(AnomalibExtModule, AnomalibModule):
    """FMGRD Lightning module: reverse distillation with feature mask generation.

    Args:
        backbone: Frozen teacher (timm name). A1: ``"wide_resnet50_2"`` (the weights of anomalib's
            ReverseDistillation); ``"wide_resnet50_2.tv_in1k"`` for the paper's torchvision weights;
            ``"efficientnet_lite0"`` for the offline variant.
        layers: The three teacher levels, at strides s, 2s, 4s (paper: ``layer1..3``).
        pre_trained: Load the teacher's ImageNet weights (tests use ``False``).
        mask_ratio: A9: fraction of positions the FMM masks in training (eq. 11).
        lr: Adam learning rate (paper: 1e-3).
        scoring: A15: map smoothing, image score and level combination
            (:class:`~anomalib_ext.models.fmgrd.config.ScoringConfig`).
        bottleneck: MSFF, SCSAtt and OCE ablations (:class:`~anomalib_ext.models.fmgrd.config.BottleneckConfig`).
        fmm: Feature mask generation ablations (:class:`~anomalib_ext.models.fmgrd.config.FMMConfig`).
        training: Loss, optimiser and early stopping (:class:`~anomalib_ext.models.fmgrd.config.TrainingConfig`).
        **components: anomalib's ``pre_processor``, ``post_processor``, ``evaluator`` and ``visualizer``
            (:class:`~anomalib.models.components.AnomalibModule`); ``True``, the default, takes this
            model's ``configure_*`` method, for the pre-processor a 256 x 256 resize with ImageNet normalisation.
    """

    frozen_modules = ("encoder",)
    #: INT8_PTQ quantises the convolutions (encoder, bottleneck, feature-mask generator) and the decoder's
    #: transposed convolutions; the attention's statistics, the cosine distances and the map stay in float (see
    #: ``AnomalibExtModule._post_training_quantization_ov``). Quantising every type, as anomalib does, moved the
    #: raw image scores of a model trained on the behaviour data by 0.52 of their f32 range and its maps by 0.38
    #: (this: 0.033 and 0.041; ``tests/integration/test_int8.py``).
    int8_quantised_types = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")

    @group_arguments
    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        mask_ratio: float = 0.65,
        lr: float = 1e-3,
        scoring: ScoringConfig = ScoringConfig(),
        bottleneck: BottleneckConfig = BottleneckConfig(),
        fmm: FMMConfig = FMMConfig(),
        training: TrainingConfig = TrainingConfig(),
        **components: Any,
    ) -> None:
        super().__init__(**components)
        self.model = FmgrdModel(
            backbone=backbone,
            input_size=self.fixed_input_size("the anomaly map is resized to it"),
            layers=layers,
            pre_trained=pre_trained,
            mask_ratio=mask_ratio,
            bottleneck=bottleneck,
            fmm=fmm,
            anomaly_map_mode=scoring.anomaly_map_mode,
            sigma=scoring.sigma,
            score_mode=scoring.score_mode,
            score_sigma=scoring.score_sigma,
            score_levels=scoring.score_levels,
        )
        self.loss = FmgrdLoss(mode=training.loss_mode, decoder_weight=training.decoder_loss_weight)
        self.lr = lr
        self.training_config = training
        self.teacher_cache = FrozenFeatureCache()

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """The ablation groups and enums saved in the hyper-parameters (``weights_only`` loading)."""
        return (AttentionConfig, BottleneckConfig, FMMConfig, ScoringConfig, TrainingConfig)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the saved pre-processor, then make the map as large as its input size."""
        super().on_load_checkpoint(checkpoint)
        self.model.input_size = tuple(self.input_size)

    def configure_optimizers(self) -> torch.optim.Adam:
        """Adam (paper section 4.2) with eq. 14's L2 term as coupled weight decay ``2 * lambda_R`` (A12)."""
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(
            parameters, lr=self.lr, betas=self.training_config.betas, weight_decay=2.0 * self.training_config.l2_lambda
        )

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Anomalib's component callbacks, plus early stopping on ``val_loss`` when a patience is set (A14)."""
        callbacks = list(super().configure_callbacks())
        if self.training_config.early_stopping_patience:
            callbacks.append(
                EarlyStopping(monitor="val_loss", patience=self.training_config.early_stopping_patience, mode="min")
            )
        return callbacks

    def on_train_end(self) -> None:
        """Give the teacher-feature cache's memory back."""
        self.teacher_cache.clear()

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Eq. 13 on the masked ``F_G`` (plus the optional ``F_D`` term, A11); logs ``train_loss``."""
        del args, kwargs  # These variables are not used.
        # the frozen teacher's features are computed once per training image
        teacher = self.teacher_cache(self.model.encode, batch.image, batch.image_path)
        generated, decoded = self.model.distil(teacher, self.generator)
        loss = self.loss(teacher, generated, decoded)
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image), sync_dist=True)
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict maps and scores; log ``val_loss`` (eq. 13, unmasked) when early stopping is on (A14)."""
        del args, kwargs  # These variables are not used.
        teacher = self.model.encode(batch.image)
        generated, _ = self.model.distil(teacher)
        if self.training_config.early_stopping_patience:
            # synced: early stopping must see the same value on every DDP rank
            val_loss = self.loss.distance(teacher, generated).detach()
            self.log("val_loss", val_loss, on_epoch=True, batch_size=len(batch.image), sync_dist=True)
        return batch.update(**self.model.predict(teacher, generated)._asdict())
