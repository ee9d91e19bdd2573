"""What only SMCC needs beyond the contract suite (``test_contract.py``): fit builds the GMM centres and a
memory bank of one batch, or of the latest images over several batches."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_ext.models import SMCC
from anomalib_ext.models.smcc.config import FeatureConfig, ScoringConfig
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

SIZE = 64
TINY = {
    "backbone": "efficientnet_lite0",
    "layers": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "pre_trained": False,
    "image_size": (SIZE, SIZE),
    "n_components": 3,
    "memory_bank_images": 4,
    "features": FeatureConfig(fusion_layer_index=1),
    # several bank chunks (bank: 4 images x 64 patches), so the export covers the chunk loop
    "scoring": ScoringConfig(knn_chunk_size=100),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("smcc_engine")
    data_root = make_fake_mvtec(root / "data", image_size=SIZE, n_train=10, n_test_good=2, n_test_defect=2)
    datamodule = MVTecAD(root=data_root, category="toy", train_batch_size=4, eval_batch_size=4, num_workers=0)
    model = SMCC(**TINY)
    engine = Engine(max_epochs=1, default_root_dir=root / "results", accelerator="cpu", devices=1)
    engine.fit(model, datamodule=datamodule)
    return {"root": root, "data_root": data_root, "datamodule": datamodule, "model": model, "engine": engine}


def test_fit_builds_centres_and_a_one_batch_bank(trained: dict) -> None:
    model = trained["model"].model
    assert bool(model.centres_fitted)
    assert model.centres.shape == (3, 496)
    # 10 training images in batches of 4, 4, 2: the short last batch never replaces the bank (T11)
    assert model.memory_bank.shape == (4 * 8 * 8, 496)
    assert not model.bank_stale
    with torch.no_grad():
        expected = model.to_patches(model.eval().embed(model.bank_images))
    torch.testing.assert_close(model.memory_bank, expected)  # refreshed with the final weights (A18)


@pytest.mark.parametrize("through", ["datamodule", "loaders"])
def test_a_bank_larger_than_the_batch_keeps_the_latest_training_images(trained: dict, tmp_path, through: str) -> None:
    # memory_bank_images 6 > batch 4: after the batches (4, 4, 2) the bank holds the last 6 images seen,
    # whether fit gets the datamodule or only its training loader
    model = SMCC(**TINY | {"memory_bank_images": 6})
    seen: list[torch.Tensor] = []
    update = model.model.update_memory
    model.model.update_memory = lambda patches, images, *args: seen.append(images) or update(patches, images, *args)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    datamodule = trained["datamodule"]
    if through == "datamodule":
        engine.fit(model, datamodule=datamodule)
    else:
        engine.fit(model, train_dataloaders=datamodule.train_dataloader())
    assert [len(images) for images in seen] == [4, 4, 2]
    torch.testing.assert_close(model.model.bank_images, torch.cat(seen)[-6:])
    assert model.model.memory_bank.shape == (6 * 8 * 8, 496)


def test_a_training_set_smaller_than_the_bank_fills_it(trained: dict, tmp_path) -> None:
    # memory_bank_images 16 > the 10 training images: the bank holds every training image once
    model = SMCC(**TINY | {"memory_bank_images": 16})
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, accelerator="cpu", devices=1)
    engine.fit(model, datamodule=trained["datamodule"])
    assert model.model.bank_images.shape[0] == 10
    assert model.model.memory_bank.shape == (10 * 8 * 8, 496)
    assert torch.unique(model.model.bank_images.flatten(1), dim=0).shape[0] == 10
