"""Run mergekit 0.1.5 from its own virtualenv and compare its outputs with ours (bf16 ulps).

mergekit lives in a SEPARATE virtualenv (its dependencies pin their own transformers & co.):
`scripts/setup_mergekit_venv.sh` creates `.venv-mergekit/` in the repo root. The interpreter is
`$MERGESCOPE_MERGEKIT_PY` if set, else `.venv-mergekit/bin/python` when present.

`run_mergekit(jobs)` runs `mergekit-yaml CONFIG OUT --no-lazy-unpickle ...` for each job inside ONE
child process of that interpreter (mergekit's import alone takes ~5-13 s; its click entry point is
called once per job with `standalone_mode=False`, i.e. exactly the `mergekit-yaml` code path).
Used by tests/test_mergekit_compat.py and tests/benchmarks/bench.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV_PY = REPO / ".venv-mergekit" / "bin" / "python"
ENV_VAR = "MERGESCOPE_MERGEKIT_PY"
MERGEKIT_VERSION = "0.1.5"
# CPU, eager reads (mergekit's lazy unpickler is for .bin files), nothing we do not compare.
MERGEKIT_ARGS = ("--no-lazy-unpickle", "--no-cuda", "--no-copy-tokenizer", "--no-write-model-card", "--quiet")

_DRIVER = r"""
import json, sys, time
from mergekit.scripts.run_yaml import main
jobs = json.loads(sys.argv[1])
for cfg, out, args in jobs:
    t0 = time.perf_counter()
    main([cfg, out, *args], standalone_mode=False)
    print(json.dumps({"out": out, "seconds": time.perf_counter() - t0}), flush=True)
"""


def mergekit_python() -> Path | None:
    """The mergekit virtualenv's interpreter, or None when there is none."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        return p if p.exists() else None
    return DEFAULT_VENV_PY if DEFAULT_VENV_PY.exists() else None


_AVAILABLE: tuple[bool, str] | None = None


def mergekit_available() -> tuple[bool, str]:
    """(True, version) when the interpreter imports mergekit 0.1.5, else (False, why)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        py = mergekit_python()
        if py is None:
            _AVAILABLE = (False, f"no mergekit virtualenv (set {ENV_VAR} or run scripts/setup_mergekit_venv.sh)")
        else:
            r = subprocess.run(
                [str(py), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            version = r.stdout.strip()
            if r.returncode != 0:
                _AVAILABLE = (False, f"{py}: cannot import mergekit ({r.stderr.strip().splitlines()[-1:]})")
            elif version != MERGEKIT_VERSION:
                _AVAILABLE = (False, f"{py}: mergekit {version}, these checks are for {MERGEKIT_VERSION}")
            else:
                _AVAILABLE = (True, version)
    return _AVAILABLE


def run_mergekit(
    jobs: Sequence[tuple[str | Path, str | Path]], extra_args: Sequence[str] = (), timeout: float = 1800
) -> dict[str, float]:
    """Run mergekit-yaml on each (config, output dir) in one child process; returns {out: seconds}."""
    py = mergekit_python()
    if py is None:
        raise RuntimeError(mergekit_available()[1])
    payload = [[str(c), str(o), [*MERGEKIT_ARGS, *extra_args]] for c, o in jobs]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [str(py), "-c", _DRIVER, json.dumps(payload)], capture_output=True, text=True, timeout=timeout, env=env
    )
    if r.returncode != 0:
        raise RuntimeError(f"mergekit failed (rc {r.returncode}):\n{r.stderr[-4000:]}")
    times = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            times[d["out"]] = d["seconds"]
    return times


def mergekit_cmd(config: str | Path, out: str | Path, extra_args: Sequence[str] = ()) -> list[str]:
    """The plain `mergekit-yaml` command line (for benchmarks that time one merge per process)."""
    py = mergekit_python()
    script = py.parent / "mergekit-yaml"
    head = [str(script)] if script.exists() else [str(py), "-m", "mergekit.scripts.run_yaml"]
    return [*head, str(config), str(out), *MERGEKIT_ARGS, *extra_args]


# ---------------------------------------------------------------------------------- comparison
def load_dir(d: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _ordered(bits: torch.Tensor, nbits: int) -> torch.Tensor:
    """Map IEEE bit patterns (as int64) to integers that are consecutive for adjacent floats."""
    sign = 1 << (nbits - 1)
    mag = bits & (sign - 1)
    return torch.where(bits & sign != 0, -mag, mag)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise distance in units in the last place of the (shared) dtype; +0 and -0 are equal."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    ints = {torch.bfloat16: (torch.int16, 16), torch.float16: (torch.int16, 16), torch.float32: (torch.int32, 32)}
    it, nbits = ints[a.dtype]
    ia = a.contiguous().view(it).to(torch.int64)
    ib = b.contiguous().view(it).to(torch.int64)
    if nbits == 16:
        ia, ib = ia & 0xFFFF, ib & 0xFFFF
    else:
        ia, ib = ia & 0xFFFFFFFF, ib & 0xFFFFFFFF
    return (_ordered(ia, nbits) - _ordered(ib, nbits)).abs()


@dataclass
class Comparison:
    n: int = 0  # compared elements
    n_diff: int = 0  # elements that differ at all
    max_ulp: int = 0
    n_excused: int = 0  # differing elements inside `allowed` (e.g. magnitude ties at a trim threshold)
    n_allowed: int = 0  # size of the allowed sets
    max_ulp_unexcused: int = 0
    n_diff_unexcused: int = 0
    n_over_1ulp: int = 0  # elements more than one ulp apart
    max_rel: float = 0.0  # max over tensors of max|ref - ours| / max|ref|
    worst: list[tuple[str, int, int]] = field(default_factory=list)  # (tensor, n_diff, max_ulp)
    missing: list[str] = field(default_factory=list)
    dtype_mismatch: list[str] = field(default_factory=list)

    @property
    def frac(self) -> float:
        return self.n_diff / max(1, self.n)

    @property
    def frac_unexcused(self) -> float:
        return self.n_diff_unexcused / max(1, self.n)

    def summary(self) -> str:
        s = (
            f"{self.n_diff}/{self.n} differ ({100 * self.frac:.4f} %; {100 * self.n_over_1ulp / max(1, self.n):.4f} % "
            f"by > 1 ulp), max {self.max_ulp} ulp, max |diff|/max|ref| {self.max_rel:.2e}"
        )
        if self.n_allowed:
            s += (
                f"; {self.n_allowed} tie positions ({100 * self.n_allowed / max(1, self.n):.2f} %), "
                f"{self.n_excused} differ there; elsewhere {self.n_diff_unexcused} differ, "
                f"max {self.max_ulp_unexcused} ulp"
            )
        return s


def compare_states(
    ref: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], allowed: dict[str, torch.Tensor] | None = None
) -> Comparison:
    """Compare two state dicts elementwise in ulps; `allowed[name]` is a bool mask of excused positions."""
    c = Comparison()
    c.missing = sorted(set(ref) ^ set(ours))
    for name in ref:
        if name not in ours:
            continue
        a, b = ref[name], ours[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            c.dtype_mismatch.append(f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
            continue
        if not a.is_floating_point():
            d = (a != b).to(torch.int64)
        else:
            d = ulp_distance(a, b)
        c.n += d.numel()
        nd = int(torch.count_nonzero(d))
        mx = int(d.max()) if d.numel() else 0
        c.n_diff += nd
        c.max_ulp = max(c.max_ulp, mx)
        c.n_over_1ulp += int(torch.count_nonzero(d > 1))
        if nd and a.is_floating_point():
            scale = float(a.float().abs().max())
            c.max_rel = max(c.max_rel, float((a.float() - b.float()).abs().max()) / (scale or 1.0))
        m = allowed.get(name) if allowed else None
        if m is not None:
            m = m.reshape(d.shape)
            c.n_allowed += int(m.sum())
            c.n_excused += int(torch.count_nonzero(d[m]))
            rest = d[~m]
        else:
            rest = d
        nu = int(torch.count_nonzero(rest))
        c.n_diff_unexcused += nu
        c.max_ulp_unexcused = max(c.max_ulp_unexcused, int(rest.max()) if rest.numel() else 0)
        if nd:
            c.worst.append((name, nd, mx))
    c.worst.sort(key=lambda w: (-w[2], -w[1]))
    c.worst = c.worst[:5]
    return c


def trim_tie_positions(
    deltas: Sequence[torch.Tensor], densities: Sequence[float], gammas: Sequence[float] | None = None
) -> torch.Tensor:
    """Positions where the magnitude trim (TIES `magnitude`, or Breadcrumbs `magnitude_outliers` when
    `gammas` is given) of at least one task vector depends on how equal magnitudes are ordered.

    mergekit ranks with an unstable `torch.argsort`, so which of several equal |delta| at a cut
    survive is unspecified there (mergescope keeps a documented, deterministic choice)."""
    out = torch.zeros(deltas[0].numel(), dtype=torch.bool)
    for i, d in enumerate(deltas):
        a = d.reshape(-1).abs().float()
        n = a.numel()
        if n == 0 or densities[i] >= 1:
            continue
        s = torch.sort(a).values  # ascending
        if gammas is None:
            k = max(1, int(densities[i] * n)) if densities[i] > 0 else 0
            cuts = [n - k]  # drop ascending positions [0, n - k)
        else:
            target = int(densities[i] * n)
            n_top = int(gammas[i] * n)
            n_bot = max(0, n - target - n_top)
            cuts = [n_bot, n_bot + target]
        for cut in cuts:
            if 0 < cut < n and s[cut - 1] == s[cut]:
                out |= a == s[cut]
    return out
