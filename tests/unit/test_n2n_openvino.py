"""N2N's OpenVINO precision marks: the error map is marked to stay f32, the network is not (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_ext.models.n2n.openvino import PRECISE_RT_INFO_KEY, keep_error_map_precise, mark_error_map_precise
from anomalib_ext.models.n2n.torch_model import N2NModel

ov = pytest.importorskip("openvino")


class _Outputs(torch.nn.Module):
    def __init__(self, model: N2NModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(image)
        return output.pred_score, output.anomaly_map


def _converted(size: int = 16) -> object:
    model = _Outputs(N2NModel(image_size=(size, size), base_channels=4).eval())
    return ov.convert_model(model, example_input=torch.rand(1, 3, size, size))


def test_marks_the_gaussian_windows_and_not_the_network() -> None:
    model = _converted()
    marked = mark_error_map_precise(model)
    ops = model.get_ops()
    windows = [op for op in ops if op.get_type_name() == "GroupConvolution"]
    network = [op for op in ops if op.get_type_name() == "Convolution"]
    assert len(windows) == 12  # 5 moment banks x (vertical, horizontal) + the L1 filter's two passes
    assert network
    assert all(PRECISE_RT_INFO_KEY in op.get_rt_info() for op in windows)
    assert not any(PRECISE_RT_INFO_KEY in op.get_rt_info() for op in network)
    assert marked == sum(PRECISE_RT_INFO_KEY in op.get_rt_info() for op in ops)


def test_marks_survive_the_rewritten_ir(tmp_path: Path) -> None:
    xml = tmp_path / "model.xml"
    ov.save_model(_converted(), xml, compress_to_fp16=False)
    assert keep_error_map_precise(xml) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    assert "DisablePrecisionConversion" in xml.read_text()
    reread = ov.Core().read_model(xml)
    windows = [op for op in reread.get_ops() if op.get_type_name() == "GroupConvolution"]
    assert windows
    # read back under the attribute's current name
    assert all("DisablePrecisionConversion_0" in op.get_rt_info() for op in windows)


def test_missing_ir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.xml"):
        keep_error_map_precise(tmp_path / "missing.xml")
