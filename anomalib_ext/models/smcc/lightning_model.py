"""SMCC: Self-updated Memory and Center Clustering.

"Unsupervised Image Anomaly Detection and Localization in Industry Based on Self-Updated Memory and
Center Clustering" (Liu, Gao, Wen, Luo; IEEE Transactions on Instrumentation and Measurement, 2023).

Multi-layer patch features of an ImageNet-pretrained CNN are clustered once (k-means++ seeding,
sensitivity-sampled coreset, weighted GMM) into a few centres. The backbone is then fine-tuned so
that each normal patch moves towards its nearest centre (L_c) and away from its second-nearest
(L_o). The memory bank holds the patches of one training batch only (here: of the latest
``memory_bank_images`` training images, which may span batches), refreshed during training, so its
size does not depend on the training set. A test patch scores the mean distance to its K
nearest memory patches; the map is upsampled bilinearly and Gaussian-smoothed.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.models import SMCC
    >>> from anomalib_ext.models.smcc.config import FeatureConfig
    >>> model = SMCC(backbone="efficientnet_lite0", layers=["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    ...              image_size=(256, 256), features=FeatureConfig(fusion_layer_index=1))  # doctest: +SKIP
    >>> engine = Engine(max_epochs=30)
    >>> engine.fit(model, datamodule=MVTecAD(category="bottle", train_batch_size=16))  # doctest: +SKIP

Paper: https://doi.org/10.1109/TIM.2023.3273677 (local copy: ``shared/papers/smcc.md``).

See Also:
    :class:`anomalib_ext.models.smcc.torch_model.SmccModel`,
    :class:`anomalib_ext.models.smcc.loss.SmccLoss`,
    :mod:`anomalib_ext.models.smcc.centres`,
    :mod:`anomalib_ext.models.smcc.config`: the ablation groups.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import Batch
from anomalib.metrics import AUROC, Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize

from anomalib_ext.models.components import AnomalibExtModule, group_arguments
from anomalib_ext.models.defaults import default_evaluator

from .centres import build_centre_set
from .config import ClusteringConfig, FeatureConfig, ScoringConfig, TrainingConfig
from .loss import SmccLoss
from .torch_model import SmccModel

logger = logging.getLogger(__name__)

__all__ = ["SMCC"]


class SMCC(AnomalibExtModule, AnomalibModule):
    """SMCC Lightning module.

    Args:
        backbone: Adapted backbone (timm name, resolved offline). A1: ``"wide_resnet50_2.tv_in1k"``, the
            torchvision weights; ``"efficientnet_lite0"`` for the offline variant.
        layers: Tapped layers, fused into one patch feature (Sec. IV-B: ``layer1..layer4``; A2).
        pre_trained: Load the backbone's ImageNet weights (tests use ``False``).
        image_size: Resize size of the default pre-processor (Sec. IV-A: 224 x 224; A22). A centre crop is
            ``pre_processor=SMCC.configure_pre_processor(image_size, center_crop_size)``.
        n_components: Number of GMM clusters k (Sec. IV-D: 10).
        memory_bank_images: Images whose patches form the memory bank (Sec. IV-C: 16, one batch; A17). Larger
            than the training batch, the bank keeps the latest ``memory_bank_images`` images over consecutive
            batches.
        lr: Learning rate (Table II: 1e-3).
        features: Fusion and backbone adaptation (:class:`~anomalib_ext.models.smcc.config.FeatureConfig`).
        clustering: The centre set (:class:`~anomalib_ext.models.smcc.config.ClusteringConfig`).
        training: Loss and optimiser (:class:`~anomalib_ext.models.smcc.config.TrainingConfig`).
        scoring: Bank refresh, k-NN score and map (:class:`~anomalib_ext.models.smcc.config.ScoringConfig`).
        **components: anomalib's ``pre_processor``, ``post_processor``, ``evaluator`` and ``visualizer``
            (:class:`~anomalib.models.components.AnomalibModule`); ``True``, the default, takes this
            model's ``configure_*`` method, for the pre-processor :meth:`configure_pre_processor` at ``image_size``.
    """

    #: INT8_PTQ quantises the backbone's convolutions and the k-NN ``MatMul`` (the memory bank, most of the
    #: weights and of the time); the fusion between them (pooling, resizing, concatenation) and the
    #: distances after the ``MatMul`` stay in float (see ``AnomalibExtModule._post_training_quantization_ov``).
    int8_quantised_types = ("Convolution", "GroupConvolution", "MatMul")

    @group_arguments
    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
        pre_trained: bool = True,
        image_size: tuple[int, int] = (224, 224),
        n_components: int = 10,
        memory_bank_images: int = 16,
        lr: float = 1e-3,
        features: FeatureConfig = FeatureConfig(),
        clustering: ClusteringConfig = ClusteringConfig(),
        training: TrainingConfig = TrainingConfig(),
        scoring: ScoringConfig = ScoringConfig(),
        **components: Any,
    ) -> None:
        # the default pre-processor replaced after the call: editing ``components``, or reading it with
        # ``.get``, makes jsonargparse type the components ``Any`` in ``--help``
        default_pre_processor = "pre_processor" not in components or components["pre_processor"] is True
        super().__init__(**components)
        if default_pre_processor:
            self.pre_processor = self.configure_pre_processor(image_size)
        if n_components < 2 and training.lambda_o > 0:
            msg = f"n_components must be >= 2 when lambda_o > 0 (L_o needs a second-nearest centre), got {n_components}"
            raise ValueError(msg)
        if memory_bank_images < 1:
            msg = f"memory_bank_images must be >= 1, got {memory_bank_images}"
            raise ValueError(msg)
        self.model = SmccModel(
            backbone=backbone, layers=layers, pre_trained=pre_trained, features=features, scoring=scoring
        )
        self.loss = SmccLoss(
            lambda_c=training.lambda_c,
            lambda_o=training.lambda_o,
            distance=training.loss_distance,
            reduction=training.loss_reduction,
            eps=training.distance_eps,
        )
        self.n_components = n_components
        self.memory_bank_images = memory_bank_images
        self.lr = lr
        self.clustering = clustering
        self.training_config = training
        self.refresh_memory_bank = scoring.refresh_bank
        self._bank_spans_batches = False
        self._n_train_images: int | None = None

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """The ablation groups saved in the hyper-parameters (``weights_only`` loading)."""
        return (FeatureConfig, ClusteringConfig, TrainingConfig, ScoringConfig)

    # ------------------------------------------------------------------ anomalib hooks
    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        center_crop_size: tuple[int, int] | None = None,
    ) -> PreProcessor:
        """Resize (default 224x224, Sec. IV-A), optional centre crop, ImageNet normalisation (A22)."""
        image_size = tuple(image_size) if image_size else (224, 224)
        crop = [CenterCrop(tuple(center_crop_size))] if center_crop_size else []
        return PreProcessor(
            transform=Compose(
                [
                    Resize(image_size, antialias=True),
                    *crop,
                    Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                ]
            ),
        )

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """The package's test metrics (AUPRO up to FPR 0.3, the papers' PRO), plus image AUROC on validation."""
        return default_evaluator(val_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_")])

    def configure_post_processor(self) -> PostProcessor:
        """Anomalib's one-class post-processor (the numbers published for SMCC were measured with it)."""
        return PostProcessor()

    def configure_optimizers(self) -> Any:
        """Adam with coupled L2 weight decay on every trainable parameter (Table II, A14)."""
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        config = self.training_config
        optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        optimizer = optimizer_class(parameters, lr=self.lr, weight_decay=config.weight_decay)
        if config.lr_scheduler == "cosine":
            epochs = max(1, self.trainer.max_epochs or 1)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        return optimizer

    # ------------------------------------------------------------------ stage 0: clustering
    @property
    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    @property
    def _bank_images_per_rank(self) -> int:
        """A17: each rank keeps ceil(bank size / world_size) images of its latest batches."""
        return math.ceil(self._bank_size / self._world_size)

    @property
    def _bank_size(self) -> int:
        """``memory_bank_images``, or the number of training images when the training set is smaller."""
        return min(self.memory_bank_images, self._n_train_images or self.memory_bank_images)

    def _clustering_batches(self) -> Any:
        """The whole training set in a fixed order, un-sharded (T18), as the trainer's loader would batch it."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_data", None)
        if dataset is not None:
            return DataLoader(
                dataset,
                batch_size=datamodule.train_batch_size,
                shuffle=False,
                num_workers=datamodule.num_workers,
                collate_fn=datamodule.external_collate_fn or dataset.collate_fn,
            )
        if self._world_size > 1:
            logger.warning("SMCC clusters on rank 0's shard only: pass a datamodule for the whole training set.")
        return self.trainer.train_dataloader

    @torch.no_grad()
    def _cluster(self, n_bank_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool all training patches (un-adapted or current backbone, eval mode) and build the centres (Alg. 2)."""
        was_training = self.model.training
        self.model.eval()
        pool, bank_images, n_seen = [], [], 0
        for batch in self._clustering_batches():
            images = batch.image.to(self.device)
            if self.pre_processor is not None:  # the loader yields un-normalised images (T4)
                images = self.pre_processor.transform(images)
            if n_seen < n_bank_images:
                bank_images.append(images[: n_bank_images - n_seen].cpu())
                n_seen += bank_images[-1].shape[0]
            pool.append(self.model.to_patches(self.model.embed(images)).float().cpu())
        self.model.train(was_training)
        if n_seen < n_bank_images:
            msg = (
                f"SMCC needs at least memory_bank_images={self.memory_bank_images} training images "
                f"for the clustering pass and the initial bank, got {n_seen}"
            )
            raise ValueError(msg)
        patches = torch.cat(pool)
        config = self.clustering
        generator = torch.Generator().manual_seed(config.seed)
        if config.max_cluster_patches is not None and patches.shape[0] > config.max_cluster_patches:
            patches = patches[torch.randperm(patches.shape[0], generator=generator)[: config.max_cluster_patches]]
        centres = build_centre_set(patches, self.n_components, config, generator)
        return centres, torch.cat(bank_images)

    def _fit_centres(self, initialise_bank: bool = True) -> None:
        """Stage 0 on rank 0, broadcast to all ranks (T18); optionally initialise the bank (A17)."""
        rank = self.trainer.global_rank
        result = self._cluster(self._bank_size) if rank == 0 else None
        if self._world_size > 1:
            result = self.trainer.strategy.broadcast(result, src=0)
            self.trainer.strategy.barrier("smcc_centres")
        centres, bank_images = result
        self.model.centres = centres.to(self.device)
        self.model.centres_fitted = torch.tensor(True, device=self.device)
        if initialise_bank:  # A17: the first memory_bank_images images of the clustering pass, same on all ranks
            self.model.refresh_memory(bank_images[: self._bank_size].to(self.device))

    def on_train_start(self) -> None:
        """Check sizes, freeze BatchNorm (T2) and run stage 0 unless the centres come from a checkpoint (T14)."""
        if self._world_size > 1 and not self.refresh_memory_bank:
            msg = "scoring.refresh_bank=False is not supported under DDP: the bank is rebuilt from all ranks (T18)"
            raise ValueError(msg)
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "train_batch_size", None)
        if batch_size is None:  # loaders given to fit directly
            batch_size = getattr(self.trainer.train_dataloader, "batch_size", None)
        train_data = getattr(datamodule, "train_data", None)
        self._n_train_images = len(train_data) if train_data is not None else None
        if self._bank_size < self.memory_bank_images:
            logger.info(
                "SMCC: memory_bank_images=%d but %d training images: the bank holds all of them",
                self.memory_bank_images,
                self._bank_size,
            )
        # a bank larger than a batch keeps the latest images over several batches (A17, T11)
        self._bank_spans_batches = batch_size is not None and batch_size < self._bank_images_per_rank
        self.model.freeze_batchnorm()
        if not bool(self.model.centres_fitted):
            self._fit_centres()

    def on_train_epoch_start(self) -> None:
        """Re-apply the BatchNorm freeze (Lightning restores modes after validation, T2); optional re-clustering."""
        super().on_train_epoch_start()
        self.model.freeze_batchnorm()
        n = self.clustering.recluster_every_n_epochs
        if n > 0 and self.current_epoch > 0 and self.current_epoch % n == 0:
            self._fit_centres(initialise_bank=False)

    # ------------------------------------------------------------------ stage 1: self-update
    def training_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """L_SMCC against the fixed centres; the bank takes this batch's patches if it is full (A17, T11)."""
        del args, kwargs
        features = self.model(batch.image)
        patches = self.model.to_patches(features)
        loss, parts = self.loss(patches, self.model.centres)
        self.model.update_memory(patches, batch.image, self._bank_images_per_rank, self._bank_spans_batches)
        self.model.bank_stale = True  # the weights change with this step (A18)
        n_images = batch.image.shape[0]
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n_images)
        parts = {f"train_{name}": value for name, value in parts.items()}
        self.log_dict(parts, on_step=False, on_epoch=True, batch_size=n_images)
        return {"loss": loss}

    # ------------------------------------------------------------------ stage 2: refresh before evaluation
    def _refresh_bank(self) -> None:
        """Re-embed the rank-ordered union of all ranks' bank images with the current weights (A18, T18)."""
        if not (self.refresh_memory_bank and self.model.bank_stale):
            return
        local_images = self.model.bank_images
        if local_images.numel() == 0:  # resumed from a checkpoint: its bank is already refreshed (T10)
            self.model.bank_stale = False
            return
        images = local_images
        if self._world_size > 1:  # same batch sizes on all ranks (DistributedSampler), so same shapes here
            images = self.all_gather(local_images).reshape(-1, *local_images.shape[1:])
        # afterwards every rank holds the same images and the same bank
        self.model.refresh_memory(images[: self._bank_size])

    def on_validation_start(self) -> None:
        """Refresh the bank before validation, hence before the checkpoint saved after it (T12)."""
        self._refresh_bank()

    def on_train_epoch_end(self) -> None:
        """Refresh the bank if no validation ran; log the collapse diagnostic (T15)."""
        self._refresh_bank()
        bank = self.model.memory_bank
        if bank.shape[0] > 1:
            self.log("train_bank_channel_std", bank.std(dim=0).mean(), on_epoch=True)

    def on_test_start(self) -> None:
        """Refresh a stale bank before testing."""
        self._refresh_bank()

    def on_predict_start(self) -> None:
        """Refresh a stale bank before predicting."""
        self._refresh_bank()

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Score the batch with the memory bank."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())
