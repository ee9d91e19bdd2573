"""Large images through :mod:`anomalib_ext.tiling`: tiles in, a whole-image map and score out.

Images are 192 x 192, three times the 64 px tile on each side (9 tiles); each defective test image
has one bright or dark square inside one known tile. FMGRD is the case that must pass; the other
tiling models run the same code (their tiny settings come from ``tests/helpers/tiny.py``); RB-AE is
refused with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from PIL import Image

from anomalib_ext.models import RBAE
from anomalib_ext.tiling import TILING_SUPPORT, TiledModel, TileGrid, Tiling, export_tiled
from tests.helpers.datasets import normal_texture
from tests.helpers.sweep import sweep
from tests.helpers.tiny import build

pytestmark = pytest.mark.slow

TILE = 64
IMAGE = 3 * TILE
#: (file name, tile row, tile column) of each defective test image: its square lies in that tile.
DEFECTS = (("d0.png", 2, 1), ("d1.png", 0, 2), ("d2.png", 1, 0))
#: A map change this small is no change (float32 noise of identical tiles run in different batches).
UNCHANGED_ATOL = 1e-4
#: Tolerance of "the stitched map is the model's map of each tile" (float32, measured: 0 to ~1e-6).
MAP_ATOL = 1e-5
#: Tolerance of OpenVINO f32 against torch on the normalised outputs (measured: below 1e-4).
EXPORT_ATOL = 2e-3


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def large_parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """192 px images: ``train/good`` (6), ``test/square/d<k>`` (a square in one tile, masks) and their twins.

    ``test/good/c<k>`` is ``d<k>`` without the square, so the two maps differ only where the defect is.
    """
    root = tmp_path_factory.mktemp("tiling") / "large_parts"
    rng = np.random.default_rng(0)
    for i in range(6):
        _save(normal_texture(rng, IMAGE), root / "train" / "good" / f"{i:03d}.png")
    for k, (name, row, col) in enumerate(DEFECTS):
        image = normal_texture(rng, IMAGE)
        _save(image, root / "test" / "good" / f"c{k}.png")
        mask = np.zeros((IMAGE, IMAGE), dtype=np.uint8)
        top, left = row * TILE + 20, col * TILE + 20
        mask[top : top + 24, left : left + 24] = 255
        image[mask > 0] = 245 if k % 2 == 0 else 10
        _save(image, root / "test" / "square" / name)
        _save(mask, root / "masks" / "square" / name)
    return root


def _folder(root: Path) -> Folder:
    return Folder(
        name="large_parts",
        root=root,
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir="test/square",
        mask_dir="masks/square",
        train_batch_size=3,
        eval_batch_size=5,
        num_workers=0,
        val_split_mode="same_as_test",
        seed=0,
    )


def _engine(root: Path, tiling: Tiling, max_epochs: int) -> Engine:
    return Engine(
        max_epochs=max_epochs,
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[tiling],
    )


# ---------------------------------------------------------------------------------------------- bad input
def test_stride_larger_than_tile_names_both_values() -> None:
    with pytest.raises(ValueError, match=r"stride=\(96, 96\) is larger than tile_size=\(64, 64\).*1 <= stride"):
        Tiling(tile_size=64, stride=96)


@pytest.mark.parametrize("value", [0, -8, (64,), (64, 0)])
def test_tile_size_that_is_not_positive_names_the_value(value: object) -> None:
    with pytest.raises(ValueError, match=r"tile_size=.*expected a positive int or a pair"):
        Tiling(tile_size=value)  # type: ignore[arg-type]


def test_tile_larger_than_image_size_names_both_sizes() -> None:
    with pytest.raises(ValueError, match=r"tile_size=\(256, 256\) is larger than the image \(192, 192\)"):
        Tiling(tile_size=256, image_size=IMAGE)


def test_tile_larger_than_the_image_of_a_batch_names_both_sizes() -> None:
    with pytest.raises(ValueError, match=r"tile_size=\(256, 256\) is larger than the image \(192, 128\)"):
        TileGrid(256).tile(torch.rand(1, 3, 192, 128))


def test_rbae_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Refused by class, before any training or export (no need to build the network)."""
    assert not TILING_SUPPORT["RBAE"].tiles
    model = RBAE.__new__(RBAE)
    with pytest.raises(ValueError, match=r"RBAE cannot be tiled: .*one defect-free reference image"):
        Tiling(TILE).setup(None, model, "fit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RBAE cannot be tiled"):
        export_tiled(model, Tiling(TILE), tmp_path, input_size=(IMAGE, IMAGE))


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("stride", [TILE, TILE // 2], ids=["no_overlap", "half_overlap"])
def test_stitched_map_is_the_models_map_of_each_tile(stride: int) -> None:
    """Untrained FMGRD in eval: the whole-image map, tile by tile, is the model's map of that tile."""
    torch.manual_seed(0)
    model = build("FMGRD", TILE).eval()
    tiling = Tiling(TILE, stride)
    tiled = tiling.tiled_model(model)
    images = torch.rand(2, 3, IMAGE, IMAGE + TILE)  # not square: 3 x 4 tiles without overlap
    with torch.no_grad():
        output = tiled(images)
        assert output.anomaly_map.shape == (2, 1, IMAGE, IMAGE + TILE)
        torch.testing.assert_close(output.pred_score, output.anomaly_map.flatten(1).amax(1))
        for top in (0, IMAGE - TILE):
            for left in (0, IMAGE):  # corner tiles: covered by one tile even with overlap
                crop = images[..., top : top + TILE, left : left + TILE]
                alone = model.model(model.pre_processor.export_transform(crop)).anomaly_map
                stitched = output.anomaly_map[..., top : top + TILE, left : left + TILE]
                if stride == TILE:
                    torch.testing.assert_close(stitched, alone, atol=MAP_ATOL, rtol=0)
                else:  # only the quarter no other tile overlaps is the model's own map
                    rows = slice(0, TILE // 2) if top == 0 else slice(TILE // 2, TILE)
                    cols = slice(0, TILE // 2) if left == 0 else slice(TILE // 2, TILE)
                    torch.testing.assert_close(stitched[..., rows, cols], alone[..., rows, cols], atol=MAP_ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------- the models
#: Every model whose map is local enough to tile (RB-AE is refused, see docs/tiling.md).
TILING_MODELS = sweep(["FMGRD", "MLDFR", "N2N", "SMCC"], default="FMGRD")
#: Settings these tests need beyond the tiny ones: SMCC's bank no larger than a batch of whole images (3).
OVERRIDES: dict[str, dict[str, object]] = {
    "SMCC": {"memory_bank_images": 2},
}


def _tile_of(index: int) -> tuple[int, int]:
    row, col = divmod(index, IMAGE)
    return row // TILE, col // TILE


@pytest.mark.parametrize("name", TILING_MODELS)
def test_tiled_model_finds_the_defect_in_its_tile(name: str, large_parts: Path, tmp_path: Path) -> None:
    """Trains on tiles, tests and predicts whole images; the defect changes the map in its tile only."""
    torch.manual_seed(0)
    model = build(name, TILE, **OVERRIDES.get(name, {}))
    engine = _engine(tmp_path, Tiling(TILE), max_epochs=1)
    datamodule = _folder(large_parts)
    engine.fit(model, datamodule=datamodule)
    metrics = engine.test(model, datamodule=datamodule)[0]
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    assert 0.0 <= metrics["pixel_AUROC"] <= 1.0
    maps = {}
    for batch in engine.predict(model, datamodule=datamodule):
        assert batch.anomaly_map.shape[-2:] == (IMAGE, IMAGE)  # the whole image, not a tile
        assert batch.image.shape[-2:] == (IMAGE, IMAGE)
        assert batch.gt_mask.shape[-2:] == (IMAGE, IMAGE)
        assert batch.pred_score.shape == (len(batch.image_path),)
        for path, anomaly_map in zip(batch.image_path, batch.anomaly_map, strict=True):
            assert "#tile" not in path
            maps[Path(path).name] = anomaly_map.reshape(IMAGE, IMAGE)
    for k, (file_name, row, col) in enumerate(DEFECTS):
        change = (maps[file_name] - maps[f"c{k}.png"]).abs()
        assert _tile_of(int(change.argmax())) == (row, col), f"{name}: {file_name} changed the wrong tile"
        assert float(change.max()) > UNCHANGED_ATOL, f"{name}: the defect of {file_name} left the map unchanged"
        outside = change.clone()
        outside[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE] = 0
        assert float(outside.max()) <= UNCHANGED_ATOL, f"{name}: {file_name} changed tiles without the defect"


# ---------------------------------------------------------------------------------------------- export
def test_openvino_export_of_tiled_fmgrd_matches_torch(large_parts: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from anomalib.deploy import OpenVINOInferencer

    torch.manual_seed(0)
    model = build("FMGRD", TILE)
    tiling = Tiling(TILE, image_size=IMAGE)  # untrained: the export's fidelity, not the model's, is tested
    path = export_tiled(model, tiling, tmp_path / "export")
    assert path.suffix == ".xml"
    assert model.pre_processor is not None  # the model is restored after the export
    assert not isinstance(model.model, TiledModel)

    image = torch.from_numpy(np.asarray(Image.open(large_parts / "test" / "square" / "d0.png"))).permute(2, 0, 1)
    image = image.float().unsqueeze(0) / 255
    inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    exported = inferencer.predict(image)
    model.eval()
    with torch.no_grad():
        expected = model.post_processor(tiling.tiled_model(model)(image))
    anomaly_map = torch.as_tensor(np.asarray(exported.anomaly_map)).reshape(IMAGE, IMAGE)
    assert anomaly_map.shape == (IMAGE, IMAGE)
    torch.testing.assert_close(anomaly_map, expected.anomaly_map.reshape(IMAGE, IMAGE), atol=EXPORT_ATOL, rtol=0)
    score = float(np.asarray(exported.pred_score).reshape(-1)[0])
    assert score == pytest.approx(float(expected.pred_score.reshape(-1)[0]), abs=EXPORT_ATOL)
