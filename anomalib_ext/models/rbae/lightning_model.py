"""RB-AE: Reference-Based Autoencoder for Surface Defect Detection (Lightning module).

Paper: "Reference-Based Autoencoder for Surface Defect Detection" (W. Luo, H. Yao, W. Yu, X. Wang).

RB-AE reconstructs textured surfaces with an autoencoder trained from scratch on normal images
with Perlin-shaped foreign-texture defects. Training has two phases in one ``fit``:

1. epochs ``[0, phase1_epochs)``: encoder + decoder learn to reconstruct, and a pixel-level
   discrimination loss makes the encoder's feature residual follow the defect mask (Eq. 14);
2. epochs ``[phase1_epochs, phase1_epochs + phase2_epochs)``: the encoder is frozen, the
   reference image (one defect-free training image) is encoded into persistent buffers, and the
   RBAMs, decoder and MSFDM learn to repair defective features from the reference and to segment
   the defects (Eq. 17).

Set the trainer's ``max_epochs`` to ``phase1_epochs + phase2_epochs`` (the configs do).

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.models import RBAE
    >>> model = RBAE(phase1_epochs=400, phase2_epochs=200)  # doctest: +SKIP
    >>> engine = Engine(max_epochs=600)  # doctest: +SKIP
    >>> engine.fit(model, datamodule=MVTecAD(category="carpet", train_batch_size=8))  # doctest: +SKIP

See Also:
    - :class:`anomalib_ext.models.rbae.torch_model.RbaeModel`: the network.
    - :class:`anomalib_ext.models.rbae.loss.RbaeLoss`: the losses.
    - :class:`anomalib_ext.augment.PerlinTextureAnomaly`: the synthetic defects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.data.utils import read_image
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

logger = logging.getLogger(__name__)

__all__ = ["RBAE"]


def _only(name: str, value: Any, supported: Any) -> None:
    """Reject values of assumption keys whose alternatives are not implemented."""
    if value != supported:
        msg = f"{name}={value!r} is not implemented; only {supported!r} (the spec default) is."
        raise NotImplementedError(msg)


class RBAE(AnomalibModule):
    """RB-AE Lightning module: two training phases, reference buffers, MSFDM anomaly map.

    Args:
        phase1_epochs: epochs of phase 1, encoder + decoder (paper: 400).
        phase2_epochs: epochs of phase 2, RBAM + decoder + MSFDM with the encoder frozen (paper:
            200). Set ``trainer.max_epochs = phase1_epochs + phase2_epochs``.
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam (coupled L2) weight decay (paper: 1e-5).
        input_size: image size ``(H, W)`` of the resize-only pre-processor and of the reference
            buffers (paper: 256 x 256); must be divisible by 64.
        encoder_channels: A2: channels of the five encoder levels.
        encoder_strides: A3: strides of the five encoder levels (only (1, 2, 2, 2, 2)).
        encoder_block: A1: encoder level design (only ``"double_conv"``).
        norm_layer: A1: normalisation of the conv blocks (only ``"batch"``).
        rbfrm_patch_sizes: RBFRM patch sizes K (paper: 2 and 4).
        rbfrm_softmax_scale: A6: softmax temperature of the RBFRM similarities (paper Eq. 4: 1).
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
            ImageNet). ``None``: cut-paste from other images of the batch (``texture_source``).
        texture_source: A14: ``"auto"``, ``"folder"``, ``"batch"`` or ``"noise"`` (see
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
        reference_selection: A28: ``"index"`` (training sample ``reference_index`` after sorting
            by path) or ``"random"`` (drawn with ``reference_seed``, same on every rank).
        reference_index: A28: index of the reference image.
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
        phase1_epochs: int = 400,
        phase2_epochs: int = 200,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        input_size: Sequence[int] = (256, 256),
        encoder_channels: Sequence[int] = (64, 128, 256, 512, 512),
        encoder_strides: Sequence[int] = (1, 2, 2, 2, 2),
        encoder_block: str = "double_conv",
        norm_layer: str = "batch",
        rbfrm_patch_sizes: Sequence[int] = (2, 4),
        rbfrm_softmax_scale: float = 1.0,
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
        if phase1_epochs < 0 or phase2_epochs < 1:
            msg = f"Need phase1_epochs >= 0 and phase2_epochs >= 1, got {phase1_epochs}, {phase2_epochs}."
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

    # ------------------------------------------------------------------ anomalib configuration
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: RB-AE works in [0, 1] pixel space, no ImageNet normalisation (A5, T11)."""
        return PreProcessor(transform=Compose([Resize(image_size or (256, 256), antialias=True)]))

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

    # ------------------------------------------------------------------ phases and reference
    @property
    def phase(self) -> int:
        """Training phase of the current epoch: 1 before ``phase1_epochs``, then 2."""
        return 1 if self.current_epoch < self.hparams.phase1_epochs else 2

    def on_train_start(self) -> None:
        """Reject a normalising pre-processor (T11); seed the defect generator per rank."""
        reject_normalize(self.pre_processor, "RB-AE works in [0, 1] pixel space.")
        self._generator = rank_generator(int(self.hparams.seed), self.global_rank, self.device)

    def on_train_epoch_start(self) -> None:
        """Enter phase 2 once: build the reference buffers; keep the encoder frozen (A26, T8)."""
        if self.phase == 2:
            if not bool(self.model.ref_ready):
                self.model.set_reference(self._reference_image())
                # Under DDP each rank's BatchNorm statistics saw only its own batches, so the
                # reference features differ slightly per rank: take rank 0's buffers everywhere.
                self._buffers_from_rank0()
                logger.info("RB-AE: phase 2 starts at epoch %d, reference buffers set.", self.current_epoch)
            if self.hparams.freeze_encoder_bn:
                self.model.encoder.eval()

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
                "RB-AE training ended in phase 1 (epoch %d < phase1_epochs=%d): no reference image, the "
                "RBAM/MSFDM are untrained. Set max_epochs = phase1_epochs + phase2_epochs.",
                self.current_epoch,
                self.hparams.phase1_epochs,
            )

    def _training_samples(self) -> Any:
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_data", None) if datamodule is not None else None
        if dataset is None:
            loader = trainer.train_dataloader
            dataset = getattr(loader, "dataset", None)
        samples = getattr(dataset, "samples", None)
        if samples is None or len(samples) == 0:
            msg = "RB-AE needs a training dataset with a `samples` table (image_path) to pick its reference image."
            raise RuntimeError(msg)
        return samples

    def _reference_image(self) -> torch.Tensor:
        """A28/T10: the resize-only pre-processed training image chosen as reference, (1, 3, H, W)."""
        paths = sorted(str(p) for p in self._training_samples()["image_path"])
        if self.hparams.reference_selection == "random":
            generator = torch.Generator().manual_seed(int(self.hparams.reference_seed))
            index = int(torch.randint(len(paths), (1,), generator=generator))
        else:
            index = int(self.hparams.reference_index) % len(paths)
        image = read_image(Path(paths[index]), as_tensor=True).unsqueeze(0)
        if self.pre_processor is not None and self.pre_processor.transform is not None:
            image = self.pre_processor.transform(image)
        image = image.to(self.device, torch.float32)
        # identical on every rank (deterministic choice; broadcast for safety under DDP)
        return self.trainer.strategy.broadcast(image, src=0).to(self.device)

    # ------------------------------------------------------------------ steps
    def _all_params_term(self) -> torch.Tensor:
        """Zero-weighted sum of every network parameter, so DDP sees all of them used in each step.

        RBAM/MSFDM are idle in phase 1 and encoder levels 4-5 in phase 2.
        """
        return sum(p.sum() for p in self.model.parameters()) * 0.0

    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """One phase-1 (Eq. 14) or phase-2 (Eq. 17) step with the phase's optimizer."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        phase = self.phase
        clean = batch.image
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
