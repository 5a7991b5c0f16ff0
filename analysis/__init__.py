"""mergescope: merge-readiness analysis, merge plans (mergekit's YAML) and streaming merges.

The Python API is the CLI's, without the terminal:

    from mergescope import Plan, analyze, run_merge

    report = analyze("base", ["code-ft", "chat-ft"])       # a Report; findings first
    plan = Plan.load("plan.yml")                           # or Plan.from_dict({...})
    plan.validate()                                        # every key, value and path, before any tensor
    result = run_merge(plan, "merged")                     # atomic, sharded safetensors + model card

Importing this package is cheap (no torch, no textual); the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mergescope._version import __version__

# public name -> module that defines it
_API = {
    "analyze": "stats.readiness",
    "analysis_for_plan": "stats.readiness",
    "Report": "stats.report",
    "Finding": "stats.report",
    "Plan": "merge.plan",
    "load_plan": "merge.plan",
    "run_merge": "merge.run",
    "MergeResult": "merge.run",
    "Cancelled": "io.progress",
    "MergeCancelled": "merge.run",
    "MergeError": "merge.run",
    "open_checkpoint": "io.checkpoint",
    "InputError": "io.errors",
    "REGISTRY": "merge.methods",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` loads them
    from mergescope.io.checkpoint import open_checkpoint  # noqa: F401
    from mergescope.io.errors import InputError  # noqa: F401
    from mergescope.io.progress import Cancelled  # noqa: F401
    from mergescope.merge.methods import REGISTRY  # noqa: F401
    from mergescope.merge.plan import Plan, load_plan  # noqa: F401
    from mergescope.merge.run import MergeCancelled, MergeError, MergeResult, run_merge  # noqa: F401
    from mergescope.stats.readiness import analysis_for_plan, analyze  # noqa: F401
    from mergescope.stats.report import Finding, Report  # noqa: F401


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'mergescope' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
