"""OpenVINO export with FP16 or INT8 compression, with the calibration data checked first.

anomalib's ``Engine.export`` compresses an OpenVINO IR with NNCF (``compression_type`` FP16, INT8,
INT8_PTQ, INT8_ACQ). The two quantising types calibrate on ``datamodule.val_dataloader()``; without a
datamodule anomalib raises only after the ONNX conversion, with a message that names neither the
argument nor the command-line flag (and says INT8_PTQ for INT8_ACQ too); a datamodule without a
validation set (``val_split_mode="none"``) fails inside the data loader. :func:`export_openvino` checks
both before anything is converted and then calls ``Engine.export`` unchanged, so the IR is exactly
anomalib's.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.deploy import CompressionType
    >>> from anomalib.engine import Engine
    >>> from anomalib_ext.export import export_openvino
    >>> from anomalib_ext.models import FMGRD
    >>> engine, model, datamodule = Engine(), FMGRD(), MVTecAD(category="bottle")
    >>> engine.fit(model, datamodule=datamodule)  # doctest: +SKIP
    >>> export_openvino(engine, model, "exports", compression_type=CompressionType.INT8_PTQ,
    ...                 datamodule=datamodule, input_size=(256, 256))  # doctest: +SKIP

See Also:
    ``docs/deployment.md`` ("INT8 and FP16") for the command-line form and measured accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomalib.data import AnomalibDataModule
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule

CALIBRATED = (CompressionType.INT8_PTQ, CompressionType.INT8_ACQ)


def as_compression(compression_type: CompressionType | str) -> CompressionType:
    """``CompressionType`` from a member or its name or value in any case (``"INT8_PTQ"``, ``"int8_ptq"``)."""
    if isinstance(compression_type, CompressionType):
        return compression_type
    return CompressionType(str(compression_type).lower())


def check_calibration(compression_type: CompressionType | str | None, datamodule: AnomalibDataModule | None) -> None:
    """Raise ``ValueError`` when ``compression_type`` needs calibration data that ``datamodule`` does not give.

    INT8_PTQ and INT8_ACQ calibrate on the datamodule's validation images (INT8_ACQ also evaluates on its
    test images); FP16, weight-only INT8 and no compression need none.
    """
    if compression_type is None:
        return
    compression = as_compression(compression_type)
    if compression not in CALIBRATED:
        return
    if datamodule is None:
        msg = (
            f"compression_type={compression.name} needs calibration images, and no datamodule was given: pass "
            "`datamodule=` to Engine.export / export_openvino, or `--data <datamodule>` to `anomalib export` "
            "(e.g. `--data MVTecAD --data.root ./datasets/MVTecAD --data.category bottle`). "
            "FP16 and weight-only INT8 need no calibration data."
        )
        raise ValueError(msg)
    datamodule.setup("fit")  # what anomalib's quantisation does first; builds the validation split
    calibration = getattr(datamodule, "val_data", None)
    if calibration is None or len(calibration) == 0:
        mode = getattr(datamodule, "val_split_mode", None)
        mode = getattr(mode, "value", mode)
        msg = (
            f"compression_type={compression.name} calibrates on the datamodule's validation images, and "
            f"{type(datamodule).__name__} has none (val_split_mode={mode!r}): use val_split_mode 'from_test', "
            "'same_as_test', 'from_train' or 'synthetic', or a datamodule with a validation folder."
        )
        raise ValueError(msg)


def export_openvino(
    engine: Engine,
    model: AnomalibModule,
    export_root: str | Path,
    compression_type: CompressionType | str | None = None,
    datamodule: AnomalibDataModule | None = None,
    input_size: tuple[int, int] | None = None,
    **kwargs: Any,
) -> Path:
    """``engine.export`` to OpenVINO after :func:`check_calibration`; returns the ``.xml`` path."""
    check_calibration(compression_type, datamodule)
    path = engine.export(
        model=model,
        export_type=ExportType.OPENVINO,
        export_root=export_root,
        input_size=input_size,
        compression_type=as_compression(compression_type) if compression_type is not None else None,
        datamodule=datamodule,
        **kwargs,
    )
    return Path(path)
