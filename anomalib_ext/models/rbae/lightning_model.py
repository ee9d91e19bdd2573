"""RB-AE: Reference-Based Autoencoder for Surface Defect Detection (Lightning module).

Paper: "Reference-Based Autoencoder for Surface Defect Detection" (W. Luo, H. Yao, W. Yu, X. Wang).

RB-AE reconstructs textured surfaces with an autoencoder trained from scratch on normal images
with Perlin-shaped foreign-texture defects. Training has two phases in one ``fit``:

1. the first ``phase1_fraction`` of the trainer's optimiser steps (paper: 400 of 600 epochs):
   encoder + decoder learn to reconstruct, and a pixel-level discrimination loss makes the
   encoder's feature residual follow the defect mask (Eq. 14);
2. the rest: the encoder is frozen, the reference image (one defect-free training image, taken
   from the training batches) is encoded into persistent buffers, and the RBAMs, decoder and MSFDM
   learn to repair defective features from the reference and to segment the defects (Eq. 17).

The phases follow the trainer's own schedule (``trainer.estimated_stepping_batches``, from
``max_epochs`` or ``max_steps``), so a shorter or longer run still ends after both phases.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.models import RBAE
    >>> model = RBAE(anomaly_source_path="datasets/dtd/images")  # doctest: +SKIP
    >>> engine = Engine(max_epochs=600)  # phase 1: epochs 0-399, phase 2: 400-599  # doctest: +SKIP
    >>> engine.fit(model=model, datamodule=MVTecAD(category="carpet", train_batch_size=8))  # doctest: +SKIP

See Also:
    - :class:`anomalib_ext.models.rbae.torch_model.RbaeModel`: the network.
    - :class:`anomalib_ext.models.rbae.loss.RbaeLoss`: the losses.
    - :class:`anomalib_ext.augment.PerlinTextureAnomaly`: the synthetic defects.
"""

from __future__ import annotations

import hashlib
import logging
import math
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
from torch import nn
from torchvision.transforms.v2 import Compose, Resize

from anomalib_ext.augment import PerlinTextureAnomaly, rank_generator
from anomalib_ext.models.defaults import pro_evaluator, reject_normalize
from anomalib_ext.models.rbae.components import PerceptualNetwork
from anomalib_ext.models.rbae.loss import RbaeLoss
from anomalib_ext.models.rbae.torch_model import RbaeModel
from anomalib_ext.post_processing import OrderPreservingPostProcessor

logger = logging.getLogger(__name__)

__all__ = ["RBAE"]

LIGHTNING_DEFAULT_MAX_EPOCHS = 1000  # what Lightning runs when neither max_epochs nor max_steps is set


def _only(name: str, value: Any, supported: Any) -> None:
    """Reject values of assumption keys whose alternatives are not implemented."""
    if value != supported:
        msg = f"{name}={value!r} is not implemented; only {supported!r} (the spec default) is."
        raise NotImplementedError(msg)


class RBAE(AnomalibModule):
    """RB-AE Lightning module: two training phases, reference buffers, MSFDM anomaly map.

    Args:
        phase1_fraction: share of the trainer's optimiser steps spent in phase 1 (encoder +
            decoder); the rest is phase 2 (RBAM + decoder + MSFDM, encoder frozen). Paper: 400 of
            600 epochs, 2/3. The step count comes from ``trainer.estimated_stepping_batches``
            (``max_epochs`` or ``max_steps``); a trainer without a finite schedule is refused.
        phase1_epochs: paper-literal alternative: epochs of phase 1 (paper: 400). Set together with
            ``phase2_epochs``; the trainer must then run exactly ``phase1_epochs + phase2_epochs``
            epochs, else training stops at start with an error.
        phase2_epochs: epochs of phase 2 with ``phase1_epochs`` (paper: 200).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam (coupled L2) weight decay (paper: 1e-5).
        input_size: image size ``(H, W)`` of the resize-only pre-processor and of the reference
            buffers (paper: 256 x 256); must be divisible by 64.
        encoder_channels: A2: channels of the five encoder levels.
        encoder_strides: A3: strides of the five encoder levels (only (1, 2, 2, 2, 2)).
        encoder_block: A1: encoder level design (only ``"double_conv"``).
        norm_layer: A1: normalisation of the conv blocks (only ``"batch"``).
        rbfrm_patch_sizes: RBFRM patch sizes K (paper: 2 and 4).
        rbfrm_softmax_scale: A6: softmax temperature of the RBFRM similarities. Paper Eq. 4: 1,
            with which no reference patch gets more than ``e / (e + N - 1)`` of the weight (the
            repair is the mean reference patch); contextual attention, cited by the paper: 10.
        rbfrm_learn_scale: A6: learn the RBFRM temperatures, starting from ``rbfrm_softmax_scale``.
        rbfrm_eps: A7: epsilon of the cosine-similarity normalisation.
        ffm_mid_channels: FFM squeeze channels (paper: 64).
        ffm_kernel_size: FFM kernel m (paper: 5).
        ffm_squeeze_norm: A8: BN + ReLU after the FFM squeeze.
        decoder_upsample: A4: decoder upsampling (only ``"bilinear"``).
        decoder_skip_levels: A4: decoder skip levels (only (3, 4), carrying RBAM outputs).
        decoder_out_activation: A5: ``"sigmoid"`` (reconstruction in [0, 1]) or ``"none"``.
        fdm_hidden_ratios: A9: FDM hidden widths as fractions of the level channels.
        fdm_num_classes: A9: FDM output classes (only 2).
        am_weights: lambda_1..3 of Eq. 11 (paper: 0.2, 0.2, 0.6).
        am_upsample_align_corners: A10: ``align_corners`` of the bilinear upsampling ``g``.
        image_score: A11: image score from the map (only ``"max"``).
        image_score_pool_size: A11: average-pool size before the max (0: none).
        anomaly_map_sigma: A12: Gaussian smoothing of the map (0: none).
        anomaly_source_path: A14: folder of natural images for the defect textures (paper:
            ImageNet; DRAEM: DTD). ``None``: anomalib's Perlin-noise textures (``texture_source``).
        texture_source: A14: ``"auto"`` (the folder if given, else ``"noise"``), ``"folder"``
            (``anomaly_source_path`` required, the paper config), ``"batch"`` or ``"noise"`` (see
            :class:`~anomalib_ext.augment.PerlinTextureAnomaly`).
        augment_anomaly_source: A14: 3 random DRAEM ops on every texture.
        perlin_rotation_range: A13: rotation range of the Perlin noise in degrees.
        perlin_dual_mask: A13: union of two Perlin masks (default: single mask).
        blend_factor: A15: beta of the paste (1.0 = Eq. 1, hard replacement).
        anomaly_probability_phase1: A16: probability of a defect per image in phase 1.
        anomaly_probability_phase2: A16: probability of a defect per image in phase 2.
        mask_resize_mode: A17: interpolation of the mask to the feature levels.
        pixel_dis_levels: encoder levels of Eq. 2 (paper: L = 5, all).
        pixel_dis_norm: A18: ``"minmax"`` or ``"max"`` normalisation of the residual map.
        pixel_dis_eps: A18: epsilon of that normalisation.
        pixel_dis_reduction: A19: reduction of Eq. 2 (only ``"mean"``).
        pixel_dis_detach_clean: A20: detach the clean features in Eq. 2.
        pixel_dis_joint_pass: A20: one encoder pass over clean + defective (only True, trap T7).
        perceptual_backbone: the perceptual-loss network (paper: ``"vgg16.tv_in1k"``), built by
            :func:`anomalib_ext.backbones.create_model`.
        perceptual_layers: A21: its taps (VGG ``features`` indices 1, 3, 6, 8, 11 = the first five
            ReLUs; ``out_indices`` for other backbones).
        loss_reduction: A22: reduction of ``L_rec``/``L_per`` (only ``"mean"``).
        fea_rep_denominator: A23: denominator of Eq. 9 (literal ``l2 - l1 = 2``).
        focal_gamma: A24: focal loss gamma.
        focal_alpha: A24: focal loss alpha (``None``: no class weighting).
        detach_rec_for_seg: A25: stop ``L_seg`` gradients at the reconstruction.
        freeze_encoder_bn: A26: keep the encoder in eval (frozen BN statistics) in phase 2.
        reset_optimizer_between_phases: A27: a fresh Adam for phase 2 (else one Adam for all).
        reference_selection: A28: ``"index"`` (the training image ``reference_index`` in path
            order) or ``"random"`` (path order after hashing with ``reference_seed``). Chosen among
            the images of the training batches seen before phase 2 (all of them once phase 1 lasts
            an epoch), before any synthetic defect; rank 0's choice under DDP.
        reference_index: A28: index of the reference image in that order.
        reference_seed: A28: seed of ``"random"`` selection.
        lr_scheduler: A30: learning-rate schedule (only ``None``).
        aupro_fpr_limit: A31: FPR limit of the AUPRO (PRO) metric.
        phase1_bypass_rbam: A32: phase-1 decoder fed with raw features (only True).
        w_rec_1: weight of ``L_rec^1`` (paper: 100).
        w_per_1: weight of ``L_per^1`` (paper: 1).
        w_pixel_dis_1: weight of ``L_pixel_dis`` (paper: 1).
        w_rec_2: weight of ``L_rec^2`` (paper: 100).
        w_per_2: weight of ``L_per^2`` (paper: 1).
        w_fea_rep_2: weight of ``L_fea_rep`` (paper: 1).
        w_seg_2: weight of ``L_seg`` (paper: 1).
        pre_trained: load real weights for the perceptual network (``False`` only in tests).
        seed: base seed of the defect generator; rank ``r`` uses ``seed + r``.
        pre_processor: pre-processor, or True for the resize-only default at ``input_size``.
        post_processor: post-processor, or True for anomalib's default.
        evaluator: evaluator, or True for image/pixel AUROC, F1 and AUPRO.
        visualizer: visualizer, or True for anomalib's default.
    """

    def __init__(
        self,
        phase1_fraction: float = 2 / 3,
        phase1_epochs: int | None = None,
        phase2_epochs: int | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        input_size: Sequence[int] = (256, 256),
        encoder_channels: Sequence[int] = (64, 128, 256, 512, 512),
        encoder_strides: Sequence[int] = (1, 2, 2, 2, 2),
        encoder_block: str = "double_conv",
        norm_layer: str = "batch",
        rbfrm_patch_sizes: Sequence[int] = (2, 4),
        rbfrm_softmax_scale: float = 10.0,
        rbfrm_learn_scale: bool = False,
        rbfrm_eps: float = 1e-12,
        ffm_mid_channels: int = 64,
        ffm_kernel_size: int = 5,
        ffm_squeeze_norm: bool = True,
        decoder_upsample: str = "bilinear",
        decoder_skip_levels: Sequence[int] = (3, 4),
        decoder_out_activation: str = "sigmoid",
        fdm_hidden_ratios: Sequence[float] = (1.0, 0.5),
        fdm_num_classes: int = 2,
        am_weights: Sequence[float] = (0.2, 0.2, 0.6),
        am_upsample_align_corners: bool = False,
        image_score: str = "max",
        image_score_pool_size: int = 0,
        anomaly_map_sigma: float = 0.0,
        anomaly_source_path: str | None = None,
        texture_source: str = "auto",
        augment_anomaly_source: bool = True,
        perlin_rotation_range: Sequence[float] = (-90.0, 90.0),
        perlin_dual_mask: bool = False,
        blend_factor: float = 1.0,
        anomaly_probability_phase1: float = 1.0,
        anomaly_probability_phase2: float = 1.0,
        mask_resize_mode: str = "area",
        pixel_dis_levels: Sequence[int] = (1, 2, 3, 4, 5),
        pixel_dis_norm: str = "minmax",
        pixel_dis_eps: float = 1e-8,
        pixel_dis_reduction: str = "mean",
        pixel_dis_detach_clean: bool = False,
        pixel_dis_joint_pass: bool = True,
        perceptual_backbone: str = "vgg16.tv_in1k",
        perceptual_layers: Sequence[int] = (1, 3, 6, 8, 11),
        loss_reduction: str = "mean",
        fea_rep_denominator: float = 2.0,
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        detach_rec_for_seg: bool = False,
        freeze_encoder_bn: bool = True,
        reset_optimizer_between_phases: bool = True,
        reference_selection: str = "index",
        reference_index: int = 0,
        reference_seed: int = 0,
        lr_scheduler: str | None = None,
        aupro_fpr_limit: float = 0.3,
        phase1_bypass_rbam: bool = True,
        w_rec_1: float = 100.0,
        w_per_1: float = 1.0,
        w_pixel_dis_1: float = 1.0,
        w_rec_2: float = 100.0,
        w_per_2: float = 1.0,
        w_fea_rep_2: float = 1.0,
        w_seg_2: float = 1.0,
        pre_trained: bool = True,
        seed: int = 0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        for name, value, supported in (
            ("encoder_block", encoder_block, "double_conv"),
            ("norm_layer", norm_layer, "batch"),
            ("decoder_upsample", decoder_upsample, "bilinear"),
            ("decoder_skip_levels", tuple(decoder_skip_levels), (3, 4)),
            ("fdm_num_classes", fdm_num_classes, 2),
            ("image_score", image_score, "max"),
            ("pixel_dis_reduction", pixel_dis_reduction, "mean"),
            ("pixel_dis_joint_pass", pixel_dis_joint_pass, True),
            ("loss_reduction", loss_reduction, "mean"),
            ("lr_scheduler", lr_scheduler, None),
            ("phase1_bypass_rbam", phase1_bypass_rbam, True),
        ):
            _only(name, value, supported)
        if reference_selection not in {"index", "random"}:
            msg = f"reference_selection must be 'index' or 'random', got {reference_selection!r}."
            raise ValueError(msg)
        if not 0 < phase1_fraction < 1:
            msg = f"phase1_fraction must be in (0, 1) (share of the optimiser steps in phase 1), got {phase1_fraction}."
            raise ValueError(msg)
        if (phase1_epochs is None) != (phase2_epochs is None):
            msg = f"Set both phase1_epochs and phase2_epochs or neither, got {phase1_epochs} and {phase2_epochs}."
            raise ValueError(msg)
        if phase1_epochs is not None and (phase1_epochs < 1 or phase2_epochs < 1):
            msg = f"Need phase1_epochs >= 1 and phase2_epochs >= 1, got {phase1_epochs}, {phase2_epochs}."
            raise ValueError(msg)
        if texture_source == "folder" and anomaly_source_path is None:
            msg = (
                "texture_source='folder' needs anomaly_source_path, a folder of natural images for the synthetic "
                "defects (the paper uses ImageNet images; DRAEM's DTD, https://www.robots.ox.ac.uk/~vgg/data/dtd/, "
                "works too): pass --model.anomaly_source_path /path/to/dtd/images, or texture_source='noise' for "
                "anomalib's Perlin-noise textures (offline)."
            )
            raise ValueError(msg)
        input_size = tuple(int(s) for s in input_size)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(input_size)
        if evaluator is True:
            evaluator = self.configure_evaluator(aupro_fpr_limit)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.automatic_optimization = False
        self.model = RbaeModel(
            input_size=input_size,
            encoder_channels=encoder_channels,
            encoder_strides=encoder_strides,
            rbfrm_patch_sizes=rbfrm_patch_sizes,
            rbfrm_softmax_scale=rbfrm_softmax_scale,
            rbfrm_learn_scale=rbfrm_learn_scale,
            rbfrm_eps=rbfrm_eps,
            ffm_mid_channels=ffm_mid_channels,
            ffm_kernel_size=ffm_kernel_size,
            ffm_squeeze_norm=ffm_squeeze_norm,
            decoder_out_activation=decoder_out_activation,
            fdm_hidden_ratios=fdm_hidden_ratios,
            am_weights=am_weights,
            am_upsample_align_corners=am_upsample_align_corners,
            anomaly_map_sigma=anomaly_map_sigma,
            image_score_pool_size=image_score_pool_size,
            freeze_encoder_bn=freeze_encoder_bn,
        )
        self.loss = RbaeLoss(
            PerceptualNetwork(perceptual_backbone, perceptual_layers, pre_trained),
            w_rec_1=w_rec_1,
            w_per_1=w_per_1,
            w_pixel_dis_1=w_pixel_dis_1,
            w_rec_2=w_rec_2,
            w_per_2=w_per_2,
            w_fea_rep_2=w_fea_rep_2,
            w_seg_2=w_seg_2,
            pixel_dis_levels=pixel_dis_levels,
            pixel_dis_norm=pixel_dis_norm,
            pixel_dis_eps=pixel_dis_eps,
            mask_resize_mode=mask_resize_mode,
            fea_rep_denominator=fea_rep_denominator,
            focal_gamma=focal_gamma,
            focal_alpha=focal_alpha,
        )
        augment = {
            "texture_dir": anomaly_source_path,
            "texture_source": texture_source,
            "augment_texture": augment_anomaly_source,
            "blend_factor": float(blend_factor),
            "rotation_range": tuple(float(r) for r in perlin_rotation_range),
            "dual_mask": perlin_dual_mask,
        }
        self.augment_phase1 = PerlinTextureAnomaly(probability=anomaly_probability_phase1, **augment)
        self.augment_phase2 = PerlinTextureAnomaly(probability=anomaly_probability_phase2, **augment)
        self._generator: torch.Generator | None = None
        self._phase1_steps: int | None = None
        self._encoder_frozen = False
        # A28: (order key, image) of the training images that come first in the reference order
        self._reference_candidates: list[list[Any]] = []
        self._images_seen = 0

    # ------------------------------------------------------------------ anomalib configuration
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: RB-AE works in [0, 1] pixel space, no ImageNet normalisation (A5, T11)."""
        return PreProcessor(transform=Compose([Resize(image_size or (256, 256), antialias=True)]))

    @classmethod
    def configure_post_processor(cls) -> PostProcessor:
        """The order-preserving post-processor: no clamp, so metrics see no ties among high scores."""
        return OrderPreservingPostProcessor()

    @staticmethod
    def configure_evaluator(aupro_fpr_limit: float = 0.3) -> Evaluator:
        """Anomalib's default metrics plus AUPRO (the papers' PRO, A31)."""
        return pro_evaluator(fpr_limit=aupro_fpr_limit)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Manual optimisation (two phases, two optimizers) forbids gradient clipping (T14)."""
        return {"gradient_clip_val": 0}

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on normal images only."""
        return LearningType.ONE_CLASS

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Phase-1 Adam (encoder + decoder) and a fresh phase-2 Adam (RBAM + decoder + MSFDM), A27."""
        hp = self.hparams
        model = self.model
        if not hp.reset_optimizer_between_phases:
            return [torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)]
        phase1 = [*model.encoder.parameters(), *model.decoder.parameters()]
        phase2 = [*model.rbam.parameters(), *model.decoder.parameters(), *model.fdm.parameters()]
        return [
            torch.optim.Adam(phase1, lr=hp.lr, weight_decay=hp.weight_decay),
            torch.optim.Adam(phase2, lr=hp.lr, weight_decay=hp.weight_decay),
        ]

    # ------------------------------------------------------------------ schedule
    def phase_schedule(self) -> tuple[int, int]:
        """``(phase1_steps, total_steps)``: optimiser steps of phase 1 and of the whole run.

        From the attached trainer's schedule (``estimated_stepping_batches``: ``max_epochs`` x
        batches per epoch, or ``max_steps`` if that comes first). With ``phase1_fraction`` any
        finite schedule is split; with ``phase1_epochs``/``phase2_epochs`` the trainer must run
        exactly their sum of epochs.

        Raises:
            ValueError: If the trainer has no finite schedule, if it is too short for two phases,
                or if it does not match ``phase1_epochs + phase2_epochs``.
        """
        trainer = self.trainer
        hp = self.hparams
        total = trainer.estimated_stepping_batches
        if hp.phase1_epochs is not None:
            epochs = hp.phase1_epochs + hp.phase2_epochs
            batches = trainer.num_training_batches
            if trainer.max_epochs != epochs or not math.isfinite(batches):
                msg = (
                    f"RB-AE: phase1_epochs + phase2_epochs = {hp.phase1_epochs} + {hp.phase2_epochs} = {epochs}, but "
                    f"the trainer runs max_epochs={trainer.max_epochs}. Set trainer.max_epochs={epochs}, or unset "
                    "phase1_epochs/phase2_epochs to split any schedule by phase1_fraction."
                )
                raise ValueError(msg)
            if total < epochs * batches:
                msg = (
                    f"RB-AE: trainer.max_steps={trainer.max_steps} stops training before the {epochs * batches} "
                    f"optimiser steps of phase1_epochs + phase2_epochs = {epochs} epochs of {batches} batches. "
                    "Remove max_steps, or unset phase1_epochs/phase2_epochs to split any schedule by phase1_fraction."
                )
                raise ValueError(msg)
            return int(hp.phase1_epochs * batches), int(total)
        if not math.isfinite(total):
            msg = (
                "RB-AE splits the trainer's optimiser steps into its two phases "
                f"(phase1_fraction={hp.phase1_fraction}), "
                f"but this trainer has no finite schedule (max_epochs={trainer.max_epochs}, "
                f"max_steps={trainer.max_steps}): set trainer.max_epochs or trainer.max_steps."
            )
            raise ValueError(msg)
        total = int(total)
        phase1 = math.floor(hp.phase1_fraction * total + 0.5)
        if not 1 <= phase1 < total:
            msg = (
                f"RB-AE: a schedule of {total} optimiser step(s) is too short for two phases "
                f"(phase1_fraction={hp.phase1_fraction} gives {phase1} phase-1 steps): train longer."
            )
            raise ValueError(msg)
        return phase1, total

    @property
    def phase(self) -> int:
        """Phase of the next optimiser step: 1 for the first ``phase1_steps`` steps, then 2.

        Outside ``fit`` (no schedule yet): 2 once the reference is set, else 1.
        """
        if self._phase1_steps is None:
            return 2 if bool(self.model.ref_ready) else 1
        return 1 if self.global_step < self._phase1_steps else 2

    def on_train_start(self) -> None:
        """Reject a normalising pre-processor (T11); seed the defect generator per rank; fix the phases."""
        reject_normalize(self.pre_processor, "RB-AE works in [0, 1] pixel space.")
        self._generator = rank_generator(int(self.hparams.seed), self.global_rank, self.device)
        self._encoder_frozen = False
        self._phase1_steps, total = self.phase_schedule()
        trainer = self.trainer
        if trainer.max_epochs == LIGHTNING_DEFAULT_MAX_EPOCHS and trainer.max_steps == -1:
            logger.warning(
                "RB-AE: the trainer runs %d epochs, Lightning's default when max_epochs is not set (the paper "
                "trains 600 = 400 + 200). Set trainer.max_epochs if that is not what you want.",
                LIGHTNING_DEFAULT_MAX_EPOCHS,
            )
        logger.info(
            "RB-AE schedule: %d optimiser steps; phase 1 = steps [0, %d), phase 2 = steps [%d, %d).",
            total,
            self._phase1_steps,
            self._phase1_steps,
            total,
        )

    def _enter_phase2(self) -> None:
        """Phase 2 starts: set the reference buffers (once) and freeze the encoder (A26, T8).

        The encoder leaves autograd (``requires_grad=False``) and its gradients are dropped before
        every phase-2 step, so neither optimiser (nor a single one, A27) can move it and the stored
        reference features stay those of the encoder that is used. Under DDP the reducer was built
        with the encoder's parameters, so they keep ``requires_grad`` there (and receive zero
        gradients from :meth:`_all_params_term`) and only the dropping applies.
        """
        if not bool(self.model.ref_ready):
            self.model.set_reference(self._reference_image())
            # Under DDP each rank's BatchNorm statistics saw only its own batches, so the
            # reference features differ slightly per rank: take rank 0's buffers everywhere.
            self._buffers_from_rank0()
            logger.info("RB-AE: phase 2 starts at step %d, reference buffers set.", self.global_step)
        self.model.freeze_encoder(requires_grad=self.trainer.world_size > 1)
        self._encoder_frozen = True

    def _buffers_from_rank0(self) -> None:
        """Copy rank 0's network buffers (BN statistics, reference) to every rank (no-op in one process)."""
        if self.trainer.world_size > 1:
            for buffer in self.model.buffers():
                buffer.copy_(self.trainer.strategy.broadcast(buffer, src=0).to(buffer.device))

    def on_train_epoch_end(self) -> None:
        """DDP: BN running statistics are updated per rank in each step; end every epoch with rank 0's."""
        self._buffers_from_rank0()

    def on_train_end(self) -> None:
        """Warn when training stopped before phase 2 (the model has no reference then, T9)."""
        if not bool(self.model.ref_ready):
            logger.warning(
                "RB-AE training ended in phase 1 (step %d, phase 2 would start at step %d): no reference image, "
                "the RBAM/MSFDM are untrained. The run was stopped early (max_time, a callback or an interruption).",
                self.global_step,
                self._phase1_steps,
            )

    # ------------------------------------------------------------------ reference image, A28
    def _reference_key(self, path: str) -> str:
        if self.hparams.reference_selection == "random":
            return hashlib.sha256(f"{self.hparams.reference_seed}:{path}".encode()).hexdigest()
        return path

    def _observe_reference_candidates(self, batch: Batch) -> None:
        """Keep the clean training images that come first in the reference order (A28).

        The images are the batch as Lightning delivers it, after the pre-processor (resize only)
        and before any synthetic defect. Images without a path are ordered by arrival.
        """
        images = batch.image
        paths = getattr(batch, "image_path", None)
        if paths is None or len(paths) != images.shape[0]:
            paths = [f"#{self._images_seen + i:012d}" for i in range(images.shape[0])]
        self._images_seen += images.shape[0]
        keep = int(self.hparams.reference_index) + 1
        candidates = self._reference_candidates
        for path, image in zip(paths, images, strict=True):
            key = self._reference_key(str(path))
            if any(key == known for known, _ in candidates):
                continue
            if len(candidates) < keep or key < candidates[-1][0]:
                candidates.append([key, image.detach().to("cpu", torch.float32).clone()])
                candidates.sort(key=lambda item: item[0])
                del candidates[keep:]

    def _reference_image(self) -> torch.Tensor:
        """A28/T10: the chosen clean, pre-processed training image, (1, 3, H, W); rank 0's under DDP."""
        index = int(self.hparams.reference_index)
        if index >= len(self._reference_candidates):
            logger.warning(
                "RB-AE: reference_index=%d but only %d training images were seen before phase 2; using the last.",
                index,
                len(self._reference_candidates),
            )
        image = self._reference_candidates[min(index, len(self._reference_candidates) - 1)][1]
        image = image.unsqueeze(0).to(self.device)
        return self.trainer.strategy.broadcast(image, src=0).to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the reference candidates, so a run resumed in phase 1 picks the same reference."""
        checkpoint["rbae_reference_candidates"] = [list(item) for item in self._reference_candidates]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the reference candidates saved by :meth:`on_save_checkpoint`."""
        self._reference_candidates = [list(item) for item in checkpoint.get("rbae_reference_candidates", [])]

    # ------------------------------------------------------------------ steps
    def _all_params_term(self) -> torch.Tensor:
        """Zero-weighted sum of every trainable network parameter, so DDP sees all of them used in each step.

        RBAM/MSFDM are idle in phase 1 and the encoder (levels 4-5 in the re-encoding) in phase 2.
        """
        return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0

    def _drop_idle_gradients(self, phase: int) -> None:
        """Forget the gradients of the modules that do not learn in ``phase`` (RBAM/MSFDM in 1, encoder in 2).

        Adam skips parameters without a gradient, so a single optimiser (A27) leaves them untouched
        too, weight decay included.
        """
        idle = (self.model.rbam, self.model.fdm) if phase == 1 else (self.model.encoder,)
        for module in idle:
            for parameter in module.parameters():
                parameter.grad = None

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """One phase-1 (Eq. 14) or phase-2 (Eq. 17) step with the phase's optimizer."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        phase = self.phase
        clean = batch.image
        if not bool(self.model.ref_ready):
            self._observe_reference_candidates(batch)
        if phase == 2 and not self._encoder_frozen:
            self._enter_phase2()
        augment = self.augment_phase1 if phase == 1 else self.augment_phase2
        with torch.no_grad():
            defective, mask = augment(clean, generator=self._generator)
        outputs = self.model(
            defective, clean_images=clean, phase=phase, detach_rec_for_seg=self.hparams.detach_rec_for_seg
        )
        if phase == 1:
            if self.hparams.pixel_dis_detach_clean:
                outputs["clean_features"] = [f.detach() for f in outputs["clean_features"]]
            loss, terms = self.loss.phase1(clean, mask, outputs)
        else:
            loss, terms = self.loss.phase2(clean, mask, outputs)
        loss = loss + self._all_params_term()
        optimizer = optimizers[phase - 1] if len(optimizers) == 2 else optimizers[0]
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(loss)
        self._drop_idle_gradients(phase)
        optimizer.step()
        size = clean.shape[0]
        self.log("train_loss", loss.detach(), on_epoch=True, prog_bar=True, logger=True, batch_size=size)
        self.log("phase", float(phase), on_epoch=True, logger=True, batch_size=size)
        for name, value in terms.items():
            self.log(f"train_{name}_{phase}", value.detach(), on_epoch=True, logger=True, batch_size=size)
        return {"loss": loss.detach()}

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Anomaly maps and scores of the validation batch."""
        return batch.update(**self.model(batch.image)._asdict())

    @property
    def perceptual_network(self) -> nn.Module:
        """The frozen network of the perceptual loss."""
        return self.loss.perceptual.network
