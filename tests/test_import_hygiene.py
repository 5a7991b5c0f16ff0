"""The core must stay UI-free: importing `mergescope` or any core module never imports textual or the TUI."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import mergescope

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["mergescope"] + [
    m.name
    for m in pkgutil.walk_packages(mergescope.__path__, "mergescope.")
    if not any(part.startswith("_") for part in m.name.split(".")) and not m.name.startswith("mergescope.tui")
]
UI = "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'tui') or m.startswith('mergescope.tui')]"


def test_core_modules_are_found():
    assert "mergescope.merge.plan" in MODULES and not any(m.startswith("mergescope.tui") for m in MODULES)


WINGS = sorted({".".join(m.split(".")[:2]) for m in MODULES})

# Every module of a wing imported in one fresh interpreter; when UI modules show up, each module is
# imported alone (one interpreter each) to name the culprits.
_CHECK = """
import importlib, subprocess, sys
mods = sys.argv[1:]
for m in mods:
    importlib.import_module(m)
{ui}
if bad:
    culprits = [m for m in mods if subprocess.run([sys.executable, "-c", "import sys, " + m + "; {ui_inline}; sys.exit(1 if bad else 0)"]).returncode]
    print(culprits, bad)
    sys.exit(1)
"""


@pytest.mark.parametrize("wing", WINGS)
def test_core_wing_does_not_import_textual(wing):
    mods = [m for m in MODULES if m == wing or m.startswith(wing + ".")]
    code = _CHECK.format(ui=UI, ui_inline=UI.replace('"', "'"))
    res = subprocess.run([sys.executable, "-c", code, *mods], cwd="/", capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{wing}: these modules import UI modules: {res.stdout} {res.stderr[-500:]}"


def test_import_mergescope_is_cheap():
    """`import mergescope` must not pull torch (heavy work happens only when asked)."""
    code = "import sys, mergescope, mergescope.io.naming, mergescope.io.errors; sys.exit(1 if 'torch' in sys.modules else 0)"
    res = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_import_linter_contracts_cover_every_wing():
    """The contracts list the wings by name: a new top-level wing must be placed in the layers and, unless
    it is the app, forbidden textual."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = set(next(c for c in contracts if c["type"] == "forbidden")["source_modules"])
    layers = {m.strip() for c in contracts if c["type"] == "layers" for layer in c["layers"] for m in layer.split("|")}
    top = {f"mergescope.{m.name}" for m in pkgutil.iter_modules(mergescope.__path__) if not m.name.startswith("_")}
    top.add("mergescope.tui")  # installed inside the package, found apart from it in an editable install
    assert layers == top, f"add to / remove from the layers in pyproject.toml: {sorted(top ^ layers)}"
    assert forbidden == top - {"mergescope.tui"}, (
        f"fix the forbidden contract: {sorted((top - {'mergescope.tui'}) ^ forbidden)}"
    )


def test_registry_plans_and_cached_reports_need_no_torch(small_family):
    """The app's first paint from a cached analysis reads the registry, builds a plan and a what-if:
    none of it may import torch (1.6 s)."""
    base, models = small_family
    code = f"""
import sys
from mergescope.stats.readiness import analyze
analyze({base!r}, {models!r})  # computes and caches (this imports torch)
"""
    env = {**__import__("os").environ}
    subprocess.run([sys.executable, "-c", code], cwd="/", env=env, check=True, timeout=300)
    code = f"""
import sys
from mergescope.stats.readiness import analyze
from mergescope.merge.plan import plan_from_group_ratios
from mergescope.merge.whatif import from_plan
r = analyze({base!r}, {models!r})
assert r.structure["from_cache"]
plan = plan_from_group_ratios("ties", {base!r}, {models!r}, {{("other", None): [1.0] * {len(models)}}}, num_layers=3)
plan.validate()
from_plan(r, plan)
sys.exit(1 if "torch" in sys.modules else 0)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-1500:]
