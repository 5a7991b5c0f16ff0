"""The installed layout: one `mergescope` package (core) with `mergescope.tui` inside, nothing at the top
level that could collide with PyPI's `analysis` or `tui`, and the data files the app needs."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    (whl,) = out.glob("mergescope-*.whl")
    return whl


def test_wheel_holds_only_mergescope_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    dist = [t for t in tops if t.endswith(".dist-info")]
    assert len(dist) == 1 and tops == {"mergescope", *dist}
    assert not any(n.startswith(("analysis/", "tui/")) for n in names)
    # every source module of both folders ships, under its installed name
    expected = {f"mergescope/{p.relative_to(ROOT / 'analysis').as_posix()}" for p in (ROOT / "analysis").rglob("*.py")}
    expected |= {f"mergescope/tui/{p.relative_to(ROOT / 'tui').as_posix()}" for p in (ROOT / "tui").rglob("*.py")}
    missing = sorted(e for e in expected if e not in names and "__pycache__" not in e)
    assert not missing, f"modules missing from the wheel (add their package to pyproject.toml): {missing}"
    for data in (
        "mergescope/demo/family/base/model.safetensors",
        "mergescope/demo/family/code/tokenizer.json",
        "mergescope/demo/heldout/prose.txt",
        "mergescope/stats/kernels/tvstats.c",
        "mergescope/tui/app.tcss",
    ):
        assert data in names, data


def _outer_site_packages() -> list[str]:
    """The site-packages of the Python running the tests (a virtualenv's own when it is one), and its
    user site when enabled: where the wheel's dependencies are installed."""
    import site

    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_the_demo_from_root(wheel, tmp_path):
    """A new virtualenv gets the wheel; the dependencies come from the test run's own environment (no
    network at test time) through a `.pth` file, which adds those folders after the venv's own
    site-packages without running their `.pth` files, so the checkout's editable install stays out.
    From `/`, nothing of the checkout is importable, and the headless demo runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    inner_site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    # after the install, so that pip never sees the outer environment's packages as its own
    Path(inner_site, "outer-env.pth").write_text("\n".join(_outer_site_packages()) + "\n")
    env = {**os.environ, "MERGESCOPE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    where = subprocess.run(
        [str(py), "-c", "import mergescope, mergescope.tui; print(mergescope.__file__); import analysis"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    assert "No module named 'analysis'" in where.stderr
    demo = subprocess.run(
        [str(venv / "bin" / "mergescope"), "demo", "--headless"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "TA code+prose" in demo.stdout and "held-out" in demo.stdout
