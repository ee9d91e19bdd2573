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
    - :mod:`anomalib_ext.models.rbae.config`: the ablation groups.
    - :class:`anomalib_ext.augment.PerlinTextureAnomaly`: the synthetic defects.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.models.components import AnomalibModule
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torchvision.transforms.v2 import Compose, Resize

from anomalib_ext.augment import PerlinTextureAnomaly, rank_generator
from anomalib_ext.models.components import AnomalibExtModule, group_arguments
from anomalib_ext.models.defaults import reject_normalize
from anomalib_ext.models.rbae.components import PerceptualNetwork
from anomalib_ext.models.rbae.config import DefectConfig, NetworkConfig, Phase1Config, Phase2Config, TrainingConfig
from anomalib_ext.models.rbae.loss import RbaeLoss
from anomalib_ext.models.rbae.torch_model import RbaeModel

logger = logging.getLogger(__name__)

__all__ = ["RBAE"]

LIGHTNING_DEFAULT_MAX_EPOCHS = 1000  # what Lightning runs when neither max_epochs nor max_steps is set


class RBAE(AnomalibExtModule, AnomalibModule):
    """RB-AE Lightning module: two training phases, reference buffers, MSFDM anomaly map.

    Args:
        phase1_fraction: share of the trainer's optimiser steps spent in phase 1 (encoder +
            decoder); the rest is phase 2 (RBAM + decoder + MSFDM, encoder frozen). Paper: 400 of
            600 epochs, 2/3. The step count comes from ``trainer.estimated_stepping_batches``
            (``max_epochs`` or ``max_steps``); a trainer without a finite schedule is refused.
            ``phase1.epochs`` and ``phase2.epochs`` replace it with fixed epoch counts.
        lr: Adam learning rate of both phases (paper: 1e-4).
        anomaly_source_path: A14: folder of natural images for the defect textures (paper:
            ImageNet; DRAEM: DTD). ``None``: anomalib's Perlin-noise textures (``defects.texture_source``).
        perceptual_backbone: the perceptual-loss network (paper: ``"vgg16.tv_in1k"``), built by
            :func:`anomalib_ext.backbones.create_model`.
        perceptual_layers: A21: its taps (VGG ``features`` indices 1, 3, 6, 8, 11 = the first five
            ReLUs; ``out_indices`` for other backbones).
        pre_trained: load real weights for the perceptual network (``False`` only in tests).
        network: Encoder, RBAM, decoder, FDM and map ablations
            (:class:`~anomalib_ext.models.rbae.config.NetworkConfig`).
        defects: Synthetic-defect ablations (:class:`~anomalib_ext.models.rbae.config.DefectConfig`).
        phase1: Eq. 14 weights and phase-1 ablations (:class:`~anomalib_ext.models.rbae.config.Phase1Config`).
        phase2: Eq. 17 weights, reference choice and phase-2 ablations
            (:class:`~anomalib_ext.models.rbae.config.Phase2Config`).
        training: weight decay and ``min_steps``, the floor for small training sets: 3 epochs of
            batch 8 are 96 steps on 250 images but 15 on 40, where RB-AE stays untrained (README,
            "Small training sets") (:class:`~anomalib_ext.models.rbae.config.TrainingConfig`).
        **components: anomalib's ``pre_processor``, ``post_processor``, ``evaluator`` and ``visualizer``
            (:class:`~anomalib.models.components.AnomalibModule`); ``True``, the default, takes this
            model's ``configure_*`` method, for the pre-processor a resize only, to 256 x 256 (its output
            size sizes the reference buffers and must be divisible by 64).
    """

    @group_arguments
    def __init__(
        self,
        phase1_fraction: float = 2 / 3,
        lr: float = 1e-4,
        anomaly_source_path: str | None = None,
        perceptual_backbone: str = "vgg16.tv_in1k",
        perceptual_layers: Sequence[int] = (1, 3, 6, 8, 11),
        pre_trained: bool = True,
        network: NetworkConfig = NetworkConfig(),
        defects: DefectConfig = DefectConfig(),
        phase1: Phase1Config = Phase1Config(),
        phase2: Phase2Config = Phase2Config(),
        training: TrainingConfig = TrainingConfig(),
        **components: Any,
    ) -> None:
        if not 0 < phase1_fraction < 1:
            msg = f"phase1_fraction must be in (0, 1) (share of the optimiser steps in phase 1), got {phase1_fraction}."
            raise ValueError(msg)
        if (phase1.epochs is None) != (phase2.epochs is None):
            msg = f"Set both phase1.epochs and phase2.epochs or neither, got {phase1.epochs} and {phase2.epochs}."
            raise ValueError(msg)
        if phase1.epochs is not None and (phase1.epochs < 1 or phase2.epochs < 1):
            msg = f"Need phase1.epochs >= 1 and phase2.epochs >= 1, got {phase1.epochs}, {phase2.epochs}."
            raise ValueError(msg)
        if training.min_steps and phase1.epochs is not None:
            msg = (
                f"training.min_steps={training.min_steps} needs the schedule of phase1_fraction: phase1.epochs/"
                f"phase2.epochs (got {phase1.epochs}/{phase2.epochs}) fix it. Set one or the other."
            )
            raise ValueError(msg)
        if defects.texture_source == "folder" and anomaly_source_path is None:
            msg = (
                "defects.texture_source='folder' needs anomaly_source_path, a folder of natural images for the "
                "synthetic defects (the paper uses ImageNet images; DRAEM's DTD, "
                "https://www.robots.ox.ac.uk/~vgg/data/dtd/, works too): pass --model.anomaly_source_path "
                "/path/to/dtd/images, or --model.defects.texture_source noise for anomalib's Perlin-noise "
                "textures (offline)."
            )
            raise ValueError(msg)
        super().__init__(**components)
        input_size = self.fixed_input_size("its reference buffers are built for it")
        self.automatic_optimization = False
        self.phase1_fraction = phase1_fraction
        self.lr = lr
        self.training_config = training
        self.weight_decay = training.weight_decay
        self.min_steps = training.min_steps
        self.defects = defects
        self.phase1_config = phase1
        self.phase2_config = phase2
        self.model = RbaeModel(input_size=input_size, network=network, freeze_encoder_bn=phase2.freeze_encoder_bn)
        self.loss = RbaeLoss(
            PerceptualNetwork(perceptual_backbone, perceptual_layers, pre_trained),
            phase1=phase1,
            phase2=phase2,
            mask_resize_mode=defects.mask_resize_mode,
        )
        augment = {
            "texture_dir": anomaly_source_path,
            "texture_source": defects.texture_source,
            "augment_texture": defects.augment_texture,
            "blend_factor": float(defects.blend_factor),
            "rotation_range": tuple(float(r) for r in defects.rotation_range),
            "dual_mask": defects.dual_mask,
        }
        self.augment_phase1 = PerlinTextureAnomaly(probability=phase1.anomaly_probability, **augment)
        self.augment_phase2 = PerlinTextureAnomaly(probability=phase2.anomaly_probability, **augment)
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
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """The ablation groups saved in the hyper-parameters (``weights_only`` loading)."""
        return (NetworkConfig, DefectConfig, Phase1Config, Phase2Config, TrainingConfig)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Manual optimisation (two phases, two optimizers) forbids gradient clipping (T14)."""
        return {"gradient_clip_val": 0}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Phase-1 Adam (encoder + decoder) and a fresh phase-2 Adam (RBAM + decoder + MSFDM), A27."""
        model = self.model
        if not self.phase2_config.reset_optimizer:
            return [torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)]
        phase1 = [*model.encoder.parameters(), *model.decoder.parameters()]
        phase2 = [*model.rbam.parameters(), *model.decoder.parameters(), *model.fdm.parameters()]
        return [
            torch.optim.Adam(phase1, lr=self.lr, weight_decay=self.weight_decay),
            torch.optim.Adam(phase2, lr=self.lr, weight_decay=self.weight_decay),
        ]

    # ------------------------------------------------------------------ schedule
    def phase_schedule(self) -> tuple[int, int]:
        """``(phase1_steps, total_steps)``: optimiser steps of phase 1 and of the whole run.

        From the attached trainer's schedule (``estimated_stepping_batches``: ``max_epochs`` x
        batches per epoch, or ``max_steps`` if that comes first). With ``phase1_fraction`` any
        finite schedule is split; with ``phase1.epochs``/``phase2.epochs`` the trainer must run
        exactly their sum of epochs.

        Raises:
            ValueError: If the trainer has no finite schedule, if it is too short for two phases,
                or if it does not match ``phase1.epochs + phase2.epochs``.
        """
        trainer = self.trainer
        phase1_epochs, phase2_epochs = self.phase1_config.epochs, self.phase2_config.epochs
        total = trainer.estimated_stepping_batches
        if phase1_epochs is not None:
            epochs = phase1_epochs + phase2_epochs
            batches = trainer.num_training_batches
            if trainer.max_epochs != epochs or not math.isfinite(batches):
                msg = (
                    f"RB-AE: phase1.epochs + phase2.epochs = {phase1_epochs} + {phase2_epochs} = {epochs}, but "
                    f"the trainer runs max_epochs={trainer.max_epochs}. Set trainer.max_epochs={epochs}, or unset "
                    "phase1.epochs/phase2.epochs to split any schedule by phase1_fraction."
                )
                raise ValueError(msg)
            if total < epochs * batches:
                msg = (
                    f"RB-AE: trainer.max_steps={trainer.max_steps} stops training before the {epochs * batches} "
                    f"optimiser steps of phase1.epochs + phase2.epochs = {epochs} epochs of {batches} batches. "
                    "Remove max_steps, or unset phase1.epochs/phase2.epochs to split any schedule by phase1_fraction."
                )
                raise ValueError(msg)
            return int(phase1_epochs * batches), int(total)
        if not math.isfinite(total):
            msg = (
                "RB-AE splits the trainer's optimiser steps into its two phases "
                f"(phase1_fraction={self.phase1_fraction}), "
                f"but this trainer has no finite schedule (max_epochs={trainer.max_epochs}, "
                f"max_steps={trainer.max_steps}): set trainer.max_epochs or trainer.max_steps."
            )
            raise ValueError(msg)
        total = int(total)
        phase1 = math.floor(self.phase1_fraction * total + 0.5)
        if not 1 <= phase1 < total:
            msg = (
                f"RB-AE: a schedule of {total} optimiser step(s) is too short for two phases "
                f"(phase1_fraction={self.phase1_fraction} gives {phase1} phase-1 steps): train longer."
            )
            raise ValueError(msg)
        return phase1, total

    def _reach_min_steps(self) -> None:
        """Add whole epochs until ``training.min_steps`` optimiser steps (epoch schedules; ``max_steps`` is kept).

        A run that validated every ``n`` epochs and at its end (``check_val_every_n_epoch: 3`` with 3
        epochs, the offline config) validates as often over the longer run, and still at its end: the
        post-processor's normalisation comes from the last validation.
        """
        trainer = self.trainer
        fit_loop = trainer.fit_loop
        epochs, batches = fit_loop.max_epochs, trainer.num_training_batches
        if not self.min_steps or epochs is None or epochs < 1 or not math.isfinite(batches) or batches < 1:
            return
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        needed = math.ceil(self.min_steps / steps_per_epoch)
        if needed > epochs:
            every = trainer.check_val_every_n_epoch
            if every is not None and every > 1 and epochs % every == 0:
                validations = epochs // every
                needed = math.ceil(needed / validations) * validations
                trainer.check_val_every_n_epoch = needed // validations
            fit_loop.max_epochs = needed
            logger.info(
                "RB-AE: %d steps per epoch, training %d epochs instead of %d to reach training.min_steps=%d.",
                steps_per_epoch,
                needed,
                epochs,
                self.min_steps,
            )

    @property
    def phase(self) -> int:
        """Phase of the next optimiser step: 1 for the first ``phase1_steps`` steps, then 2.

        Outside ``fit`` (no schedule yet): 2 once the reference is set, else 1.
        """
        if self._phase1_steps is None:
            return 2 if bool(self.model.ref_ready) else 1
        return 1 if self.global_step < self._phase1_steps else 2

    def on_fit_start(self) -> None:
        """The shared per-rank generator, seeded from ``defects.seed`` when one is set."""
        super().on_fit_start()
        if self.defects.seed is not None:
            self.generator = rank_generator(int(self.defects.seed), self.global_rank, self.device)

    def on_train_start(self) -> None:
        """Reject a normalising pre-processor (T11); fix the phases."""
        reject_normalize(self.pre_processor, "RB-AE works in [0, 1] pixel space.")
        self._encoder_frozen = False
        self._reach_min_steps()
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
        if self.phase2_config.reference_selection == "random":
            return hashlib.sha256(f"{self.phase2_config.reference_seed}:{path}".encode()).hexdigest()
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
        keep = int(self.phase2_config.reference_index) + 1
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
        index = int(self.phase2_config.reference_index)
        if index >= len(self._reference_candidates):
            logger.warning(
                "RB-AE: phase2.reference_index=%d but only %d training images were seen before phase 2; "
                "using the last.",
                index,
                len(self._reference_candidates),
            )
        image = self._reference_candidates[min(index, len(self._reference_candidates) - 1)][1]
        image = image.unsqueeze(0).to(self.device)
        return self.trainer.strategy.broadcast(image, src=0).to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save anomalib's component configuration and the reference candidates.

        anomalib's part holds the pre-processor (its input size), so a reloaded model sees images at
        the trained size; the candidates make a run resumed in phase 1 pick the same reference.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint["rbae_reference_candidates"] = [list(item) for item in self._reference_candidates]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the saved components and the reference candidates saved by :meth:`on_save_checkpoint`."""
        super().on_load_checkpoint(checkpoint)
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
            defective, mask = augment(clean, generator=self.generator)
        outputs = self.model(
            defective, clean_images=clean, phase=phase, detach_rec_for_seg=self.phase2_config.detach_rec_for_seg
        )
        if phase == 1:
            if self.phase1_config.pixel_dis_detach_clean:
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
