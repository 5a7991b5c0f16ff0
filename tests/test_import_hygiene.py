"""The core must stay UI-free: importing analysis or any of its modules never imports textual."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import analysis

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["analysis"] + [f"analysis.{m.name}" for m in pkgutil.walk_packages(analysis.__path__, "") if not m.name.startswith("_")]


@pytest.mark.parametrize("module", MODULES)
def test_core_module_does_not_import_textual(module):
    code = f"import sys, {module}; bad = [m for m in sys.modules if m == 'textual' or m.startswith('textual.') or m == 'tui' or m.startswith('tui.')]; print(bad); sys.exit(1 if bad else 0)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{module} imports UI modules: {res.stdout} {res.stderr[-500:]}"


def test_import_analysis_is_cheap():
    """`import analysis` must not pull torch (heavy work happens only when asked)."""
    code = "import sys, analysis, analysis.naming, analysis.errors; sys.exit(1 if 'torch' in sys.modules else 0)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
