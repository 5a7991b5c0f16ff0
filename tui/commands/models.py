"""Model references on the command line: Hugging Face repo ids (`org/name@revision`) not yet in the local
cache are downloaded, after their configs and safetensors headers are checked against the base, before
a command opens anything (`mergescope.io.hub`). Messages go to stderr."""

from __future__ import annotations

import sys


def _say(message: str) -> None:
    print(f"mergescope: {message}", file=sys.stderr, flush=True)


def fetch_models(refs: list[str], base: str | None = None) -> None:
    """Download the repo ids among `refs` (`base` first, the others checked against it)."""
    from mergescope.io.hub import fetch

    fetch([r for r in refs if r], base=base, say=_say)


def fetch_plan_models(plan) -> None:
    """Download the plan's repo ids (checked against its base_model)."""
    from mergescope.merge.plan.refs import fetch_models as fetch_refs

    fetch_refs(plan, say=_say)
