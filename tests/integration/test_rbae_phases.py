"""RB-AE's two phases under a real Lightning trainer (issue 15).

- The phase boundary follows the trainer's own schedule (``max_epochs`` or ``max_steps``), so no run
  can silently end in phase 1; a trainer without a finite schedule is refused.
- In phase 2 the encoder is out of autograd and out of every optimiser step, so the stored reference
  features stay those of the encoder in use.
- The reference image comes from the training batches Lightning delivers, not from the datamodule's
  internals (issue 17), so any dataset of anomalib items works.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from anomalib.data import ImageBatch, ImageItem
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from anomalib_ext.models import RBAE
from anomalib_ext.models.rbae.config import NetworkConfig, Phase1Config, Phase2Config, TrainingConfig

SIZE = 64
TINY = {
    "network": NetworkConfig(encoder_channels=(8, 8, 16, 16, 16), ffm_mid_channels=8),
    "perceptual_backbone": "efficientnet_lite0",
    "perceptual_layers": (0, 1),
    "pre_trained": False,
    "lr": 1e-3,
    "evaluator": False,
    "visualizer": False,
}
N_IMAGES = 6
BATCH = 2  # 3 batches (optimiser steps) per epoch


def tiny(**kwargs) -> RBAE:
    """The tiny model with its own 64 px resize-only pre-processor."""
    return RBAE(**TINY, pre_processor=RBAE.configure_pre_processor((SIZE, SIZE)), **kwargs)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core CI machine, more threads oversubscribe it badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class InMemoryImages(Dataset):
    """Normal images with paths and nothing else: no ``samples`` table, no files, no datamodule.

    Stored at 80 px so that the reference must go through the model's pre-processor (resize to 64).
    """

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(N_IMAGES, 3, 80, 80, generator=generator)
        # listed out of path order, so that "first by path" is not "first in the list"
        self.paths = [f"/data/train/good/img_{i:02d}.png" for i in (3, 0, 5, 1, 4, 2)]

    def __len__(self) -> int:
        return N_IMAGES

    def __getitem__(self, index: int) -> ImageItem:
        return ImageItem(image=self.images[index], gt_label=torch.tensor(0), image_path=self.paths[index])


def loader() -> DataLoader:
    return DataLoader(InMemoryImages(), batch_size=BATCH, shuffle=True, collate_fn=ImageBatch.collate)


class PhaseRecorder(Callback):
    """Phase of every optimiser step, and the encoder's state when phase 2 begins."""

    def __init__(self) -> None:
        self.phases: list[int] = []
        self.encoder_at_phase2: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: RBAE, *args: object) -> None:
        self.phases.append(pl_module.phase)
        if pl_module.phase == 2 and self.encoder_at_phase2 is None:
            self.encoder_at_phase2 = {k: v.clone() for k, v in pl_module.model.encoder.state_dict().items()}


def fit(model: RBAE, **trainer_args: object) -> tuple[Trainer, PhaseRecorder]:
    torch.manual_seed(0)
    recorder = PhaseRecorder()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[recorder],
        **trainer_args,
    )
    trainer.fit(model, train_dataloaders=loader())
    return trainer, recorder


def test_phases_split_max_steps_so_a_learning_curve_run_ends_in_phase2() -> None:
    """The harness's learning-curve mode trains with ``max_steps`` and ``max_epochs=-1``."""
    model = tiny(phase1_fraction=0.5)
    trainer, recorder = fit(model, max_steps=7, max_epochs=-1)
    assert trainer.global_step == 7
    assert recorder.phases == [1, 1, 1, 1, 2, 2, 2]  # round(0.5 * 7) = 4 phase-1 steps
    assert bool(model.model.ref_ready)


def test_phases_split_max_epochs() -> None:
    model = tiny()  # phase1_fraction 2/3, the paper's 400 of 600 epochs
    trainer, recorder = fit(model, max_epochs=3)
    assert trainer.global_step == 9
    assert recorder.phases == [1] * 6 + [2] * 3
    assert bool(model.model.ref_ready)


@pytest.mark.parametrize(
    ("min_steps", "epochs", "phases"),
    [(0, 3, [1] * 6 + [2] * 3), (10, 4, [1] * 8 + [2] * 4), (9, 3, [1] * 6 + [2] * 3)],  # off; 3 -> 4 epochs; met
)
def test_min_steps_adds_whole_epochs_before_the_phases_are_split(min_steps: int, epochs: int, phases: list) -> None:
    model = tiny(training=TrainingConfig(min_steps=min_steps))  # 6 images, batch 2: 3 steps an epoch
    trainer, recorder = fit(model, max_epochs=3)
    assert trainer.current_epoch == epochs
    assert recorder.phases == phases  # 2/3 of all the steps, the added ones included, in phase 1


def test_min_steps_keeps_a_validation_at_the_end_of_the_longer_run() -> None:
    # the offline config validates once, after its 3 epochs; 4 epochs must not leave the last one unvalidated
    trainer, _ = fit(tiny(training=TrainingConfig(min_steps=10)), max_epochs=3, check_val_every_n_epoch=3)
    assert (trainer.current_epoch, trainer.check_val_every_n_epoch) == (4, 4)
    trainer, _ = fit(tiny(training=TrainingConfig(min_steps=10)), max_epochs=2, check_val_every_n_epoch=1)
    assert (trainer.current_epoch, trainer.check_val_every_n_epoch) == (4, 1)  # every epoch: nothing to change


def test_min_steps_is_refused_when_negative_or_beside_phase_epochs() -> None:
    with pytest.raises(ValueError, match=r"training\.min_steps=-1"):
        TrainingConfig(min_steps=-1)
    with pytest.raises(ValueError, match=r"training\.min_steps=5 .*phase1\.epochs"):
        tiny(training=TrainingConfig(min_steps=5), phase1=Phase1Config(epochs=2), phase2=Phase2Config(epochs=1))


def test_a_trainer_without_finite_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="no finite schedule"):
        fit(tiny(), max_epochs=-1, max_steps=-1)


def test_too_short_a_schedule_for_two_phases_is_refused() -> None:
    with pytest.raises(ValueError, match="too short for two phases"):
        fit(tiny(), max_steps=1, max_epochs=-1)


def test_paper_literal_epoch_counts_must_match_the_trainer() -> None:
    with pytest.raises(ValueError, match="max_epochs=3"):
        fit(tiny(phase1=Phase1Config(epochs=2), phase2=Phase2Config(epochs=1)), max_epochs=5)
    with pytest.raises(ValueError, match="max_steps=4"):
        fit(tiny(phase1=Phase1Config(epochs=2), phase2=Phase2Config(epochs=1)), max_epochs=3, max_steps=4)
    _, recorder = fit(tiny(phase1=Phase1Config(epochs=2), phase2=Phase2Config(epochs=1)), max_epochs=3)
    assert recorder.phases == [1] * 6 + [2] * 3


@pytest.mark.parametrize("reset_optimizer", [True, False], ids=["two_optimisers", "one_optimiser"])
def test_phase2_freezes_the_encoder(reset_optimizer: bool) -> None:
    """Phase 2: encoder weights and BN statistics bit-identical, no gradients, whatever the optimiser set-up.

    Before the fix the encoder kept ``requires_grad`` and received gradients from the re-encoded
    reconstruction; with one optimiser (A27 alternative) Adam then moved it, so the stored reference
    features no longer matched the encoder.
    """
    model = tiny(phase1_fraction=0.5, phase2=Phase2Config(reset_optimizer=reset_optimizer))
    _, recorder = fit(model, max_epochs=2)
    assert recorder.phases == [1] * 3 + [2] * 3
    assert recorder.encoder_at_phase2 is not None
    for key, value in model.model.encoder.state_dict().items():
        assert torch.equal(value, recorder.encoder_at_phase2[key]), key
    for name, parameter in model.model.encoder.named_parameters():
        assert not parameter.requires_grad, name
        assert parameter.grad is None, name
    assert not model.model.encoder.training
    # and the reference features are those of the encoder now in use
    features = model.model.encoder(model.model.ref_image)
    for level in (3, 4, 5):
        assert torch.allclose(getattr(model.model, f"ref_feat_{level}"), features[level - 1], atol=1e-6)


@pytest.mark.parametrize("reference_index", [0, 1])
def test_reference_is_taken_from_the_training_batches_in_path_order(reference_index: int) -> None:
    """A28 without the datamodule: the ``reference_index``-th clean training image by path, pre-processed.

    The dataset has no ``samples`` table and there is no datamodule; before the fix RB-AE read the
    reference file through them and could not train here.
    """
    model = tiny(phase1_fraction=0.5, phase2=Phase2Config(reference_index=reference_index))
    fit(model, max_epochs=2)
    dataset = InMemoryImages()
    expected_path = f"/data/train/good/img_{reference_index:02d}.png"
    image = dataset.images[dataset.paths.index(expected_path)].unsqueeze(0)
    expected = model.pre_processor.transform(image)
    assert expected.shape == (1, 3, SIZE, SIZE)
    assert torch.allclose(model.model.ref_image, expected, atol=1e-6)
