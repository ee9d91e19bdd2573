"""What only RB-AE needs beyond the contract suite (``test_contract.py``): fit runs both phases and sets
the reference."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine

from anomalib_ext.models import RBAE
from anomalib_ext.models.rbae.config import NetworkConfig, Phase1Config, Phase2Config
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow

SIZE = 64
TINY = {
    "pre_processor": RBAE.configure_pre_processor((SIZE, SIZE)),
    "network": NetworkConfig(encoder_channels=(8, 16, 32, 32, 32), ffm_mid_channels=16),
    "perceptual_backbone": "efficientnet_lite0",
    "perceptual_layers": (0, 1, 2),
    "pre_trained": False,
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core CI machine, more threads oversubscribe it badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rbae_engine")
    data_root = make_fake_mvtec(root / "data", n_train=4, n_test_good=2, n_test_defect=2, image_size=SIZE)
    datamodule = MVTecAD(root=data_root, category="toy", train_batch_size=2, eval_batch_size=2, num_workers=0)
    model = RBAE(phase1=Phase1Config(epochs=1), phase2=Phase2Config(epochs=1), **TINY)
    engine = Engine(max_epochs=2, default_root_dir=root / "results", accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=datamodule)
    return {"root": root, "data_root": data_root, "datamodule": datamodule, "model": model, "engine": engine}


def test_fit_runs_both_phases_and_sets_reference(trained: dict) -> None:
    model: RBAE = trained["model"]
    assert trained["engine"].trainer.current_epoch == 2
    assert bool(model.model.ref_ready)
    # A28: reference = first training image by sorted path, resize-only pre-processed
    first = sorted((trained["data_root"] / "toy" / "train" / "good").glob("*.png"))[0]
    expected = model.pre_processor.transform(read_image(first, as_tensor=True).unsqueeze(0))
    assert torch.allclose(model.model.ref_image, expected)
    feats = model.model.encoder.eval()(model.model.ref_image)
    for level in (3, 4, 5):
        assert torch.allclose(getattr(model.model, f"ref_feat_{level}"), feats[level - 1], atol=1e-6)
