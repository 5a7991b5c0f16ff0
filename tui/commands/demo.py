"""Open the explorer on the bundled trained demo family with a sample plan preloaded.

The family is `mergescope.demo`'s: a tiny trained Llama base, four fine-tunes and a fine-tune of another
base. The sample plan is a TIES merge of code + prose.
"""

from __future__ import annotations

from pathlib import Path

from mergescope import demo
from mergescope.demo import SAMPLE_PLAN


def demo_paths() -> tuple[str, list[str]]:
    """(base, models) of the bundled family as the demo shows them; an InputError when it is missing."""
    base, models = demo.demo_paths()
    return _shown(base), [_shown(m) for m in models]


def _shown(path: Path) -> str:
    """The path as the demo shows it: relative to the working directory when that is shorter."""
    import os

    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def add_arguments(p) -> None:
    p.add_argument("--no-plan", action="store_true", help="start with an empty plan instead of the sample")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the analysis cache")
    p.add_argument(
        "--headless",
        action="store_true",
        help="no UI: analyse the family, merge two domain fine-tunes, score them and their inputs on held-out "
        "text per domain (bits per byte, lower is better), then a greedy soup and a weight sweep",
    )
    p.add_argument("--output", metavar="DIR", help="with --headless: keep the merged models in DIR")


def _check_output(output: str) -> None:
    """--output DIR gets one folder per demo merge: each is created, or replaces an earlier demo's."""
    from mergescope.io.guard import Read, Write, check_io
    from mergescope.tui.commands.demo_headless import merge_folders

    root = Path(output).expanduser()
    writes = [Write(root / f, "--output", folder=True) for f in merge_folders()] if root.is_dir() else []
    check_io([Read(demo.family_dir())], writes or [Write(root, "--output", folder=True)], force=True)


def build_app(no_plan: bool = False, use_cache: bool = True, **kw):
    """The demo app, ready to run: the headless path and tests build it the same way."""
    from mergescope.tui.app import MergeScopeApp

    base, models = demo_paths()
    import tempfile

    kw.setdefault("output_dir", str(Path(tempfile.gettempdir()) / "mergescope-demo-merged"))
    kw.setdefault("texts", [_shown(p) for p in sorted(demo.heldout_dir().glob("*.txt"))])
    return MergeScopeApp(
        base,
        models,
        None,
        use_cache=use_cache,
        remember_set=False,
        title="demo family",
        sample_plan=None if no_plan else dict(SAMPLE_PLAN),
        **kw,
    )


def run(args) -> int:
    if args.headless:
        from mergescope.tui.commands.demo_headless import run_headless

        if args.output:
            _check_output(args.output)
        run_headless(args.output, use_cache=not args.no_cache)
        return 0
    app = build_app(no_plan=args.no_plan, use_cache=not args.no_cache)
    app.run()
    return int(app.return_code or 0)
