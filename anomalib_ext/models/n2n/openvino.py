"""Keep N2N's error map in f32 inside an OpenVINO IR, whatever the device's default precision.

Why: OpenVINO's CPU plugin runs models in bf16 by default on CPUs with AVX512-BF16 or AMX
(``core.get_property("CPU", "INFERENCE_PRECISION_HINT")``). It lowers every convolution, and
everything between convolutions, to bf16; only the "tail" after the last convolution stays in f32.
N2N's error map (per-pixel MS-SSIM + Gaussian L1, :class:`~anomalib_ext.models.n2n.loss.MSSSIML1Map`)
is made of separable Gaussian convolutions, 33 x 1 and 1 x 33, so it is lowered too, with two effects
(OpenVINO 2026.4, AMD EPYC with AVX512-BF16, measured):

- **A hang.** oneDNN's bf16 depthwise kernel (``brgconv_avx512_dw_bf16``) does not return from a
  1 x k convolution with k >= 15 on rows of 32 pixels or more (a single 1 x 33 depthwise conv on a
  1 x 3 x 1 x 96 input did not finish in 30 s; 33 x 1 and k <= 13 take milliseconds). The whole N2N
  IR at the default precision did not finish one inference in minutes, f32 takes milliseconds.
- **Wrong maps.** SSIM's variances are differences of Gaussian moments, ``w * x^2 - (w * x)^2``;
  with bf16 moments (8-bit mantissa) the cancellation leaves errors of the order of SSIM's ``C2 =
  9e-4`` and the map changes by up to 0.2 (spec T8).

The fix keeps the reconstruction network in the device's precision (bf16 where available, the
expensive part) and marks the nodes of the error map, and everything else after the network, with
OpenVINO's "disable precision conversion" run-time attribute (``ov::disable_fp16_compression``,
``rt_info`` key ``precise_0``, serialised in the IR as ``DisablePrecisionConversion``), which the CPU
plugin honours for bf16 as it does for f16. These nodes then run in f32 with f32 kernels: no hang and
the f32 map up to the network's bf16 rounding. No global ``INFERENCE_PRECISION_HINT`` is needed.

Example:
    >>> from anomalib_ext.models.n2n.openvino import keep_error_map_precise  # doctest: +SKIP
    >>> keep_error_map_precise("exports/weights/openvino/model.xml")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["NETWORK_OP_TYPES", "PRECISE_RT_INFO_KEY", "keep_error_map_precise", "mark_error_map_precise"]

#: rt_info key of ``ov::DisablePrecisionConversion`` (formerly ``DisableFP16Compression``, "precise" v0).
PRECISE_RT_INFO_KEY = "precise_0"
#: Operation types that belong to the reconstruction network, where the walk from the outputs stops.
#: The network's convolutions are plain ``Convolution``; the error map's Gaussian windows are
#: per-channel ``GroupConvolution`` (the walk passes through them).
NETWORK_OP_TYPES = frozenset({"Convolution", "MatMul"})


def mark_error_map_precise(model: Any) -> int:
    """Mark every node reachable backwards from the outputs without crossing a network op.

    That is the error map, the noise blending, the pre-processing and the post-processing: all
    elementwise work and the Gaussian windows, none of the network's convolutions.

    Args:
        model: An ``openvino.Model`` (changed in place; openvino is imported lazily).

    Returns:
        The number of nodes marked.
    """
    seen: set[str] = set()
    stack = list(model.get_results())
    marked = 0
    while stack:
        node = stack.pop()
        name = node.get_name()  # unique per node (friendly names may repeat)
        if name in seen:
            continue
        seen.add(name)
        if node.get_type_name() in NETWORK_OP_TYPES:
            continue
        node.get_rt_info()[PRECISE_RT_INFO_KEY] = ""
        marked += 1
        stack.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return marked


def keep_error_map_precise(xml_path: str | Path) -> int:
    """Rewrite the IR at ``xml_path`` (and its ``.bin``) with the error map marked (see module docstring).

    Constants keep the precision they were saved in (an FP16-compressed export stays compressed).

    Args:
        xml_path: The ``.xml`` written by ``to_openvino``.

    Returns:
        The number of nodes marked.

    Raises:
        FileNotFoundError: If ``xml_path`` does not exist.
    """
    import openvino as ov

    xml_path = Path(xml_path)
    if not xml_path.is_file():
        msg = f"OpenVINO model {xml_path} does not exist: expected the .xml written by to_openvino."
        raise FileNotFoundError(msg)
    model = ov.Core().read_model(xml_path)
    marked = mark_error_map_precise(model)
    tmp_xml = xml_path.with_name(xml_path.stem + ".precise.xml")
    ov.save_model(model, tmp_xml, compress_to_fp16=False)
    del model  # releases the memory-mapped weights before the files are replaced
    tmp_xml.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
    tmp_xml.replace(xml_path)
    return marked
