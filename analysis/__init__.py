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

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "analyze": "readiness",
    "analysis_for_plan": "readiness",
    "Report": "report",
    "Finding": "report",
    "Plan": "plan",
    "load_plan": "plan",
    "run_merge": "merge",
    "MergeResult": "merge",
    "MergeCancelled": "merge",
    "MergeError": "merge",
    "open_checkpoint": "checkpoint",
    "InputError": "errors",
    "REGISTRY": "methods",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` loads them
    from .checkpoint import open_checkpoint  # noqa: F401
    from .errors import InputError  # noqa: F401
    from .merge import MergeCancelled, MergeError, MergeResult, run_merge  # noqa: F401
    from .methods import REGISTRY  # noqa: F401
    from .plan import Plan, load_plan  # noqa: F401
    from .readiness import analysis_for_plan, analyze  # noqa: F401
    from .report import Finding, Report  # noqa: F401


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'mergescope' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
