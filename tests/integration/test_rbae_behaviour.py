"""RB-AE behaviour: trained briefly on normal textures, it ranks defects higher and localises them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from torchmetrics.classification import BinaryAUROC

from anomalib_ext.models import RBAE
from anomalib_ext.models.rbae.config import NetworkConfig, Phase1Config, Phase2Config
from tests.helpers.datasets import make_fake_mvtec

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core CI machine, more threads oversubscribe it badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SIZE = 64
# the highest map value must lie inside the defect mask dilated by this many pixels
TOLERANCE_PX = 3


def test_defects_score_higher_and_map_peaks_inside_the_defect(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data_root = make_fake_mvtec(tmp_path / "data", n_train=8, n_test_good=4, n_test_defect=6, image_size=SIZE)
    datamodule = MVTecAD(root=data_root, category="toy", train_batch_size=2, eval_batch_size=10, num_workers=0)
    model = RBAE(
        phase1=Phase1Config(epochs=3),
        phase2=Phase2Config(epochs=12),
        lr=1e-3,
        pre_processor=RBAE.configure_pre_processor((SIZE, SIZE)),
        network=NetworkConfig(encoder_channels=(8, 16, 32, 32, 32), ffm_mid_channels=16),
        perceptual_backbone="efficientnet_lite0",
        perceptual_layers=(0, 1),
        evaluator=False,
        visualizer=False,
    )
    engine = Engine(
        max_epochs=15,
        default_root_dir=tmp_path / "results",
        accelerator="cpu",
        devices=1,
        check_val_every_n_epoch=100,
        num_sanity_val_steps=0,
        logger=False,
    )
    engine.fit(model=model, datamodule=datamodule)

    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    images, _ = model.pre_processor.transform(batch.image, batch.gt_mask)
    model.model.eval()
    with torch.no_grad():
        out = model.model(images)
    labels = batch.gt_label.int()
    scores = out.pred_score
    auroc = BinaryAUROC()(scores, labels).item()
    print(f"RBAE behaviour: image AUROC {auroc:.3f}")
    assert auroc > 0.8, f"image AUROC {auroc:.3f}, scores {scores.tolist()}, labels {labels.tolist()}"

    masks = batch.gt_mask.float().view(-1, 1, SIZE, SIZE)
    dilated = F.max_pool2d(masks, 2 * TOLERANCE_PX + 1, stride=1, padding=TOLERANCE_PX) > 0
    hits = []
    for i in torch.nonzero(labels).flatten().tolist():
        peak = out.anomaly_map[i, 0].flatten().argmax()
        hits.append(bool(dilated[i, 0].flatten()[peak]))
    print(f"RBAE behaviour: map peak inside the defect for {sum(hits)}/{len(hits)} images")
    assert sum(hits) >= len(hits) - 1, f"map peaks inside the defect for {sum(hits)}/{len(hits)} images"
