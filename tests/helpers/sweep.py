"""Per-model sweeps: one model in the default run, every model with ``pytest -m extended``.

The default run (the README's ``pytest``, and CI) must finish inside CI's 30 minutes on 2 cores; the
contract suite (``tests/integration/test_contract.py``) already takes every model through the engine,
the CLI and OpenVINO there. Heavier per-model sweeps that repeat a whole training per model (DDP, INT8,
tiling, own images) run one representative model by default and the others under the ``extended``
marker, which ``pyproject.toml`` leaves out unless asked for: ``pytest -m extended`` (or
``pytest -m "slow or extended"``).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest


def sweep(names: Iterable[str], default: str) -> list:
    """``pytest.param`` per model name: ``default`` unmarked, the others marked ``extended``."""
    return [
        pytest.param(name, id=name, marks=() if name == default else pytest.mark.extended) for name in sorted(names)
    ]
