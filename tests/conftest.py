"""Shared fixtures. Every test gets its own analysis cache and config directory (nothing leaks between
tests or into the user's home); the checkpoint builders live in tests/ckpt_utils.py."""

import sys
from pathlib import Path

import pytest
import torch

# the demo trainer's model (scripts/tinylm.py) is training code, outside the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from tests.ckpt_utils import make_family  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MERGESCOPE_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="session")
def small_family(tmp_path_factory) -> tuple[str, list[str]]:
    """(base, [3 fine-tunes]) of the 3-layer float32 test Llama, built once per run (read-only)."""
    base, models = make_family(tmp_path_factory.mktemp("family"), dtype=torch.float32, n_models=3)
    return str(base), [str(m) for m in models]
