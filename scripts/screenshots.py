"""Screenshots of the explorer's main views, from real runs: SVG (Textual) and PNG (rsvg-convert).

    python scripts/screenshots.py                      # the bundled demo family → screenshots/
    python scripts/screenshots.py --family DIR --base base --models code prose dialog
    python scripts/screenshots.py --only evaluate help  # just these pictures

Drives the real app headless (Textual's pilot) on real checkpoints: analyse, verdicts, heatmaps,
plan editor with the what-if, a real merge into a temporary directory, help, the Evaluate tab
(the plan scored and one cell swept on the held-out texts, in memory), the sensitivity heatmap and
the fit panel. Paths are shown
relative to the family directory so the pictures stay readable. PNGs need `rsvg-convert`
(Debian/Ubuntu: `apt-get install librsvg2-bin`); without it only the SVGs are written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = (120, 40)
SMALL = (80, 24)
MAIN_VIEWS = (
    "verdicts",
    "heatmap",
    "heatmap-pair-cosine",
    "heatmap-trimmed-conflict",
    "plan-whatif",
    "plan-whatif-share",
    "merge",
    "help",
)


def to_png(svg: Path) -> Path | None:
    """rsvg-convert, with spaces preserved (Textual writes &#160;, which rsvg drops at span edges)."""
    exe = shutil.which("rsvg-convert")
    if exe is None:
        return None
    text = svg.read_text().replace("<svg ", '<svg xml:space="preserve" ', 1)
    with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as fh:
        fh.write(text)
        tmp = fh.name
    png = svg.with_suffix(".png")
    try:
        subprocess.run([exe, tmp, "-o", str(png)], check=True)
    finally:
        os.unlink(tmp)
    return png


def save_downgraded(app, path: Path, system: str = "standard") -> None:
    """An SVG of the screen as a 16-colour (`standard`) or 256-colour terminal shows it: every colour
    mapped to the nearest one that terminal has, the way Rich downgrades for such terminals."""
    import io

    from rich.color import ColorSystem
    from rich.console import Console
    from rich.segment import Segment, Segments
    from rich.style import Style

    cs = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT}[system]
    width, height = app.size
    opts = dict(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
        safe_box=False,
    )
    render = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    src = Console(**opts)
    segs = []
    for seg in src.render(render, src.options):
        st = seg.style
        if st is not None and (st.color is not None or st.bgcolor is not None):
            st = st + Style(
                color=st.color.downgrade(cs) if st.color else None,
                bgcolor=st.bgcolor.downgrade(cs) if st.bgcolor else None,
            )
        segs.append(Segment(seg.text, st, seg.control))
    out = Console(record=True, **opts)
    out.print(Segments(segs), end="")
    path.write_text(out.export_svg(title=f"{app.title} ({'16' if system == 'standard' else '256'} colours)"))


async def settle(app, pilot, t: float = 0.25) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause(t)
    await app.workers.wait_for_complete()
    await pilot.pause()


async def shoot(
    out: Path, family: Path, base: str, models: list[str], sample: dict, only: set[str] | None = None
) -> list[Path]:
    from mergescope.tui.app import MergeScopeApp

    shots: list[Path] = []

    def want(*names: str) -> bool:
        return not only or any(n in only for n in names)

    def save(app, name: str) -> None:
        if not want(name):
            return
        path = out / f"{name}.svg"
        app.save_screenshot(filename=path.name, path=str(out))
        shots.append(path)

    os.chdir(family)
    # 1. open dialog (fresh app, no paths)
    if want("open"):
        app = MergeScopeApp(blink=False, remember_set=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            app.screen.query_one("#open-base").value = base
            for k, m in enumerate(models[:2]):
                app.screen.query_one(f"#open-model-{k}").value = m
            await pilot.pause()
            save(app, "open")
    # 2.. the main views on one app
    if want(*MAIN_VIEWS):
        app = MergeScopeApp(base, models, blink=False, remember_set=False, sample_plan=sample)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            save(app, "verdicts")
            await pilot.press("h", "2")
            await pilot.press(*["down"] * 3, "right", "right")
            await settle(app, pilot)
            save(app, "heatmap")
            await pilot.press("c", "6", "p")
            await settle(app, pilot)
            save(app, "heatmap-pair-cosine")
            await pilot.press("c", "4")
            await settle(app, pilot)
            save(app, "heatmap-trimmed-conflict")
            await pilot.press("e")
            await settle(app, pilot)
            await pilot.press("down", "right", "plus", "plus", "plus")
            await settle(app, pilot)
            save(app, "plan-whatif")
            await pilot.press("w", "w")
            await settle(app, pilot)
            save(app, "plan-whatif-share")
            tmp = Path(tempfile.mkdtemp(prefix="mergescope-shot-"))
            try:
                await pilot.press("x")
                await pilot.pause()
                app.main.query_one("#merge-output").value = str(tmp / "merged")
                await pilot.press("ctrl+g")
                await settle(app, pilot, 0.5)
                save(app, "merge")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            await pilot.press("h", "question_mark")
            await pilot.pause()
            save(app, "help")
    # 3. a small terminal
    if want("heatmap-80x24", "plan-80x24"):
        app = MergeScopeApp(base, models, blink=False, remember_set=False, sample_plan=sample)
        async with app.run_test(size=SMALL) as pilot:
            await settle(app, pilot)
            await pilot.press("h", "4")
            await settle(app, pilot)
            save(app, "heatmap-80x24")
            await pilot.press("e")
            await settle(app, pilot)
            save(app, "plan-80x24")
    # 4. as a 16-colour terminal (SSH without truecolor) shows it
    if want("heatmap-16-colours"):
        app = MergeScopeApp(base, models, blink=False, remember_set=False, sample_plan=sample, low_colour=True)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("h", "4", "down", "right")
            await settle(app, pilot)
            path = out / "heatmap-16-colours.svg"
            save_downgraded(app, path, "standard")
            shots.append(path)
    # 5. the Evaluate tab: the plan scored, then the first sample model's weight over every block swept
    if want("evaluate"):
        from mergescope.demo import heldout_dir
        from mergescope.merge.plan.ratio_table import BAND_MODES

        texts = [os.path.relpath(p, family) for p in sorted(heldout_dir().glob("*.txt"))]
        app = MergeScopeApp(base, models, blink=False, remember_set=False, sample_plan=sample, texts=texts)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            one_band = (BAND_MODES.index(1) - BAND_MODES.index(app.plan_state.band_mode)) % len(BAND_MODES)
            await pilot.press("e", *["b"] * one_band, "down")  # the row of every block, all groups
            await settle(app, pilot)
            await pilot.press("u", "s")
            await settle(app, pilot, 0.5)
            await pilot.press("w")
            await settle(app, pilot, 0.5)
            save(app, "evaluate")
    # 6. the spectral pass's heatmap (SAR per module), and the plan editor's tune panel
    if want("heatmap-spectral-sar", "plan-tune"):
        from mergescope.demo import heldout_dir

        texts = [os.path.relpath(p, family) for p in sorted(heldout_dir().glob("*.txt"))]
        app = MergeScopeApp(base, models, blink=False, remember_set=False, sample_plan=sample, texts=texts, spectral=64)
        app.tune_trials, app.tune_seed = 12, 0
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("h", "dollar_sign", "down", "right")
            await settle(app, pilot)
            save(app, "heatmap-spectral-sar")
            if want("plan-tune"):
                await pilot.press("e", "O")
                await settle(app, pilot, 1.0)
                save(app, "plan-tune")
    # 7. per-layer ratios from gradients: the sensitivity heatmap of a three-model task arithmetic plan,
    #    and the plan editor's fit panel at layer granularity (a short fit: 10 steps)
    if want("sensitivity", "fit"):
        from mergescope.demo import heldout_dir
        from mergescope.merge.plan.ratio_table import BAND_MODES

        texts = [os.path.relpath(p, family) for p in sorted(heldout_dir().glob("*.txt"))]
        three = {"method": "task_arithmetic", "models": models[:3], "weight": 0.5}
        app = MergeScopeApp(base, models, blink=False, remember_set=False, sample_plan=three, texts=texts)
        app.fit_steps = 10
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            await pilot.press("h", "percent_sign")
            await settle(app, pilot, 0.5)
            await pilot.press("t", "down", "down", "right", "right")  # the second text; L1 · mlp
            await settle(app, pilot)
            app.clear_notifications()
            await pilot.pause()
            save(app, "sensitivity")
            if want("fit"):
                per_layer = (BAND_MODES.index(0) - BAND_MODES.index(app.plan_state.band_mode)) % len(BAND_MODES)
                await pilot.press("e", *["b"] * per_layer, "F")
                await settle(app, pilot, 0.5)
                app.clear_notifications()
                await pilot.pause()
                save(app, "fit")
    return shots


def main() -> int:
    from mergescope.demo import DEMO_MODELS, SAMPLE_PLAN, family_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", type=Path, default=family_dir(), help="directory holding the checkpoints")
    ap.add_argument("--base", default="base")
    ap.add_argument("--models", nargs="+", default=list(DEMO_MODELS))
    ap.add_argument("--out", type=Path, default=ROOT / "screenshots")
    ap.add_argument("--sample-models", nargs=2, default=SAMPLE_PLAN["models"], help="the two models of the sample plan")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these screenshots (e.g. evaluate help)")
    a = ap.parse_args()
    family = a.family.resolve()
    models = [m for m in a.models if (family / m).exists()]
    if not (family / a.base).exists() or not models:
        print(f"no checkpoints under {family}", file=sys.stderr)
        return 2
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        os.environ.setdefault("MERGESCOPE_CACHE_DIR", str(Path(d) / "cache"))
        os.environ["MERGESCOPE_CONFIG_DIR"] = str(Path(d) / "config")
        sample = dict(SAMPLE_PLAN, models=list(a.sample_models))
        shots = asyncio.run(shoot(out, family, a.base, models, sample, set(a.only or ())))
    for svg in shots:
        png = to_png(svg)
        print(
            f"{svg.relative_to(out.parent) if out.parent in svg.parents else svg}"
            + (f"  {png.name}" if png else "  (no rsvg-convert: SVG only)")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
