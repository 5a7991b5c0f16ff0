"""Optional C kernels, compiled at first use with the system C compiler and loaded with ctypes.

They fuse what would be dozens of torch passes per tensor into one read per pass (see tvstats.c).
No compiler, a failed build, or MERGESCOPE_NO_C_KERNELS=1 simply means the torch implementation is
used: results are the same (tests compare the two), only slower. The shared library is cached per
source hash and machine in the user's cache dir.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

_SRC = Path(__file__).with_name("tvstats.c")
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False
build_error: str | None = None


def _cache_dir() -> Path:
    from mergescope.io.cache import user_cache_root

    return Path(os.environ.get("MERGESCOPE_KERNEL_DIR") or user_cache_root() / "kernels")


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _build(cc: str, out: Path) -> None:
    # reassociation lets the block sums vectorise (they are float within a 2048-element block anyway)
    flags = [
        "-O3",
        "-march=native",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fassociative-math",
        "-fno-signed-zeros",
        "-fPIC",
        "-shared",
        "-fopenmp",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / out.name
        res = subprocess.run([cc, *flags, str(_SRC), "-o", str(tmp_out)], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:  # e.g. no OpenMP: build single-threaded
            flags.remove("-fopenmp")
            res = subprocess.run(
                [cc, *flags, str(_SRC), "-o", str(tmp_out)], capture_output=True, text=True, timeout=120
            )
        if res.returncode != 0:
            raise RuntimeError(res.stderr.strip()[-500:])
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_out), str(out))


def lib() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (no compiler, build failed, or disabled)."""
    global _LIB, _TRIED, build_error
    if os.environ.get("MERGESCOPE_NO_C_KERNELS"):
        return None
    if _TRIED:
        return _LIB
    with _LOCK:
        if _TRIED:
            return _LIB
        _TRIED = True
        cc = _compiler()
        if cc is None:
            build_error = "no C compiler found"
            return None
        key = hashlib.sha256(_SRC.read_bytes() + platform.machine().encode() + platform.node().encode()).hexdigest()[
            :16
        ]
        so = _cache_dir() / f"tvstats-{key}.so"
        try:
            if not so.is_file():
                _build(cc, so)
            lib_ = ctypes.CDLL(str(so))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            build_error = str(exc)
            return None
        p, i, i64, vp = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
        lib_.tv_pass1.argtypes = [p, i, vp, vp, i, i64, vp, vp, vp, vp, i, i]
        lib_.tv_pass2.argtypes = [p, i, vp, vp, i, i64, vp, vp, i, vp]
        lib_.tv_bracket.argtypes = [p, i, vp, vp, i, i64, vp, vp, vp, vp, vp, vp, vp, vp, vp, i64]
        lib_.tv_bracket.restype = i64
        lib_.tv_gather.argtypes = [p, i, vp, vp, i, vp, i64, vp]
        for f in (lib_.tv_pass1, lib_.tv_pass2, lib_.tv_gather):
            f.restype = None
        _LIB = lib_
        return _LIB
