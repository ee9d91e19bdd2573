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
    :class:`anomalib.models.ReverseDistillation`: the built-in baseline it extends.
"""

from __future__ import annotations

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
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_ext.augment import rank_generator
from anomalib_ext.models.components import FrozenFeatureCache
from anomalib_ext.models.defaults import pro_evaluator
from anomalib_ext.post_processing import OrderPreservingPostProcessor

from .loss import FmgrdLoss
from .torch_model import FmgrdModel


class FMGRD(AnomalibModule):
    """Lightning module of FMGRD.

    Method knobs have the paper's defaults; ``A<n>`` marks a choice the paper leaves open (spec section 5).

    Args:
        backbone: timm name of the frozen teacher. A1: ``"wide_resnet50_2"`` (same weights as anomalib's
            ReverseDistillation); ``"wide_resnet50_2.tv_in1k"`` for the paper's torchvision weights;
            ``resnet18``/``resnet50`` for Table 4; ``efficientnet_lite0`` for the offline variant.
        layers: The three teacher levels. Paper: the first three residual stages ``layer1..3``
            (``blocks.1/2/4`` or ``[1, 2, 3]`` for EfficientNet).
        pre_trained: Load the teacher's ImageNet weights (paper: yes; tests use ``False``).
        backbone_weights_path: Optional local weights file of the teacher (offline use).
        fusion_channels: A2: output channels of the MSFF 1x1 fuse conv; ``None`` = C3, ``0`` = none (RD).
        fusion_levels: A2: teacher levels fused by MSFF (paper: all three; Table 7 ablation).
        use_scconv: A3: SCConv in SCSAtt (paper: yes; Table 6 ablation).
        use_simam: A3: SimAM in SCSAtt (paper: yes; Table 6 ablation).
        scsatt_pointwise: A3: the 1x1 conv + BN + ReLU between SCConv and SimAM.
        scsatt_residual: A3: residual connection around SCSAtt (default no).
        sru_group_num: A4: GroupNorm groups of the SRU (4).
        sru_gate_threshold: SRU gate threshold (paper eq. 4: 0.5).
        sru_gate_mode: A4: ``"soft"`` gate of the reference code or the literal ``"hard"`` gate.
        cru_alpha: CRU split ratio (paper: halves, 0.5).
        cru_squeeze_ratio: A5: CRU squeeze ratio (2).
        cru_groups: A5: groups of the CRU group-wise conv (2).
        cru_kernel_size: A5: kernel of the CRU group-wise conv (3).
        cru_softmax: A5: ``"branch"`` (eq. 7, per-channel over the two branches) or ``"reference"``.
        simam_lambda: A6: SimAM lambda (1e-4).
        oce_num_blocks: A7: OCE blocks; ``None`` = 3 bottlenecks / 2 basic blocks.
        oce_width_per_group: A7: OCE bottleneck width; ``None`` = 128 for wide_resnet*, else 64.
        oce_out_channels: Offline variant: channels of ``F_B``; ``None`` = the teacher's /32 stage width.
        decoder_blocks: Offline variant: blocks per stage of the non-ResNet decoder ((2, 2, 2)).
        use_fmm: A17: feature mask generation modules (paper: yes; Table 5 ablation).
        fmm_align: A8: the 1x1 ``f_align`` conv of the FMM (paper: yes).
        fmm_hidden_channels: A8: channels between the two 3x3 FMM convs; ``None`` = level channels.
        fmm_inline: A8: feed ``F_G`` instead of ``F_D`` into the next decoder stage (default: side branch).
        mask_ratio: A9: mask rate lambda_M of eq. 11 (0.65).
        mask_mode: A9: ``"spatial"`` (B,1,H,W) mask (eq. 11) or ``"channel"`` (B,C,1,1).
        fmm_eval: A10: FMM at test time, ``"unmasked"``, ``"expectation"`` or ``"random"`` (not exportable).
        mask_seed: Seed of the FMM mask generator, offset by the process rank so DDP ranks draw different
            masks; ``None`` = ``torch.initial_seed()`` (set by ``seed_everything``).
        loss_mode: A11: ``"pixel"`` (eq. 13) or ``"flatten"`` (RD/anomalib loss).
        decoder_loss_weight: A11: weight of an extra ``L_kd(F_E, F_D)`` term (0).
        lr: Adam learning rate (paper: 1e-3).
        betas: A13: Adam betas ((0.5, 0.999), RD's code).
        l2_lambda: A12: lambda_R of eq. 14 (1e-5), applied as Adam ``weight_decay = 2 * l2_lambda``.
        early_stopping_patience: A14: epochs without improvement before stopping; ``None`` = off.
        early_stopping_monitor: A14: monitored metric (``"val_loss"``, eq. 13 in eval mode).
        anomaly_map_mode: A15: ``"add"`` (sum of level maps) or ``"multiply"``.
        sigma: A15: sigma of the Gaussian smoothing of the map (4).
        score_mode: A15/A19: image score from the map, ``"max"`` or ``"mean"``.
        upsample_align_corners: A15: ``align_corners`` of the bilinear upsampling (True).
        conv_init: A16: ``"kaiming_fan_out"`` (RD's OCBE init) or ``"default"`` for the bottleneck.
        aupro_fpr_limit: A18: FPR limit of the AUPRO metric added to the evaluator (0.3 = paper's PRO).
        pre_processor: Pre-processor, or ``True`` for the default (256x256, ImageNet normalisation).
        post_processor: Post-processor, or ``True`` for the default.
        evaluator: Evaluator, or ``True`` for image/pixel AUROC, F1 and AUPRO.
        visualizer: Visualizer, or ``True`` for the default.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[str | int] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights_path: str | None = None,
        fusion_channels: int | None = None,
        fusion_levels: Sequence[int] = (0, 1, 2),
        use_scconv: bool = True,
        use_simam: bool = True,
        scsatt_pointwise: bool = True,
        scsatt_residual: bool = False,
        sru_group_num: int = 4,
        sru_gate_threshold: float = 0.5,
        sru_gate_mode: str = "soft",
        cru_alpha: float = 0.5,
        cru_squeeze_ratio: int = 2,
        cru_groups: int = 2,
        cru_kernel_size: int = 3,
        cru_softmax: str = "branch",
        simam_lambda: float = 1e-4,
        oce_num_blocks: int | None = None,
        oce_width_per_group: int | None = None,
        oce_out_channels: int | None = None,
        decoder_blocks: Sequence[int] = (2, 2, 2),
        use_fmm: bool = True,
        fmm_align: bool = True,
        fmm_hidden_channels: int | None = None,
        fmm_inline: bool = False,
        mask_ratio: float = 0.65,
        mask_mode: str = "spatial",
        fmm_eval: str = "unmasked",
        mask_seed: int | None = None,
        loss_mode: str = "pixel",
        decoder_loss_weight: float = 0.0,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.5, 0.999),
        l2_lambda: float = 1e-5,
        early_stopping_patience: int | None = None,
        early_stopping_monitor: str = "val_loss",
        anomaly_map_mode: str = "add",
        sigma: float = 4,
        score_mode: str = "max",
        upsample_align_corners: bool = True,
        conv_init: str = "kaiming_fan_out",
        aupro_fpr_limit: float = 0.3,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if evaluator is True:
            evaluator = self.configure_evaluator(aupro_fpr_limit)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if self.input_size is None:
            msg = "Input size is required for FMGRD: pass a pre-processor that resizes."
            raise ValueError(msg)
        self.model = FmgrdModel(
            backbone=backbone,
            input_size=self.input_size,
            layers=layers,
            pre_trained=pre_trained,
            backbone_weights_path=backbone_weights_path,
            fusion_channels=fusion_channels,
            fusion_levels=fusion_levels,
            use_scconv=use_scconv,
            use_simam=use_simam,
            scsatt_pointwise=scsatt_pointwise,
            scsatt_residual=scsatt_residual,
            sru_group_num=sru_group_num,
            sru_gate_threshold=sru_gate_threshold,
            sru_gate_mode=sru_gate_mode,
            cru_alpha=cru_alpha,
            cru_squeeze_ratio=cru_squeeze_ratio,
            cru_groups=cru_groups,
            cru_kernel_size=cru_kernel_size,
            cru_softmax=cru_softmax,
            simam_lambda=simam_lambda,
            oce_num_blocks=oce_num_blocks,
            oce_width_per_group=oce_width_per_group,
            oce_out_channels=oce_out_channels,
            decoder_blocks=decoder_blocks,
            use_fmm=use_fmm,
            fmm_align=fmm_align,
            fmm_hidden_channels=fmm_hidden_channels,
            fmm_inline=fmm_inline,
            mask_ratio=mask_ratio,
            mask_mode=mask_mode,
            fmm_eval=fmm_eval,
            anomaly_map_mode=anomaly_map_mode,
            sigma=sigma,
            score_mode=score_mode,
            upsample_align_corners=upsample_align_corners,
            conv_init=conv_init,
        )
        self.loss = FmgrdLoss(mode=loss_mode)
        self.teacher_cache = FrozenFeatureCache()
        self.decoder_loss_weight = decoder_loss_weight
        self.mask_seed = mask_seed
        self.lr = lr
        self.betas = tuple(betas)
        self.l2_lambda = l2_lambda
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_monitor = early_stopping_monitor

    @staticmethod
    def configure_post_processor() -> PostProcessor:
        """The order-preserving post-processor: metrics see no clamping ties (anomalib_ext.post_processing)."""
        return OrderPreservingPostProcessor()

    @staticmethod
    def configure_evaluator(aupro_fpr_limit: float = 0.3) -> Evaluator:
        """Anomalib's default metrics plus ``AUPRO(fpr_limit=0.3)``, the papers' PRO (A18)."""
        return pro_evaluator(fpr_limit=aupro_fpr_limit)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Everything but the frozen teacher: MSFF, SCSAtt, OCE, decoder, FMMs."""
        return [p for name, p in self.model.named_parameters() if p.requires_grad and not name.startswith("encoder.")]

    def configure_optimizers(self) -> torch.optim.Adam:
        """Adam (paper section 4.2) with eq. 14's L2 term as coupled weight decay ``2 * lambda_R`` (A12)."""
        return torch.optim.Adam(
            self.trainable_parameters(), lr=self.lr, betas=self.betas, weight_decay=2.0 * self.l2_lambda
        )

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Anomalib's component callbacks, plus early stopping when ``early_stopping_patience`` is set (A14)."""
        callbacks = list(super().configure_callbacks())
        if self.early_stopping_patience:
            callbacks.append(
                EarlyStopping(monitor=self.early_stopping_monitor, patience=self.early_stopping_patience, mode="min")
            )
        return callbacks

    def on_train_start(self) -> None:
        """Seed the FMM mask generator per process, on the model's device (different masks per DDP rank)."""
        self.model.mask_generator = rank_generator(self.mask_seed, self.global_rank, self.device)

    def on_train_end(self) -> None:
        """Drop the generator so the module can be copied and exported, and the teacher-feature cache."""
        self.model.mask_generator = None
        self.teacher_cache.clear()

    def on_train_epoch_start(self) -> None:
        """Re-freeze the teacher: Lightning restores train mode after validation (BN statistics stay fixed)."""
        self.model.encoder.eval()

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Eq. 13 on the masked ``F_G`` (plus the optional ``F_D`` term, A11); logs ``train_loss``."""
        del args, kwargs  # These variables are not used.
        # the frozen teacher's features are computed once per training image (FrozenFeatureCache)
        teacher = self.teacher_cache(self.model.encode, batch.image, batch.image_path)
        generated, decoded = self.model.distil(teacher)
        loss = self.loss(teacher, generated)
        if self.decoder_loss_weight > 0:
            loss = loss + self.decoder_loss_weight * self.loss(teacher, decoded)
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, batch_size=len(batch.image), sync_dist=True)
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict maps and scores; log ``val_loss`` (eq. 13, unmasked) when early stopping is on (A14)."""
        del args, kwargs  # These variables are not used.
        if not self.early_stopping_patience:
            predictions = self.model(batch.image)
        else:  # one eval-mode pass (no masks, BN statistics untouched) for both the map and val_loss
            teacher, generated, _ = self.model.extract(batch.image)
            predictions = self.model.predict(teacher, generated, batch.image.shape[-2:])
            # Synced: early stopping on val_loss must see the same value on every DDP rank.
            val_loss = self.loss(teacher, generated).detach()
            self.log("val_loss", val_loss, on_epoch=True, batch_size=len(batch.image), sync_dist=True)
        return batch.update(**predictions._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """What the method needs from the trainer: no gradient clipping, no sanity validation (as RD)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS
