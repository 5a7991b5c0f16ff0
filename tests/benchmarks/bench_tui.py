"""Measure the explorer's responsiveness on a real model set (headless, Textual's pilot).

    python3 tests/benchmarks/bench_tui.py BASE MODEL [MODEL ...] [--size 120x40] [--presses 100]

Reports: time from app start to the first painted report (warm cache: run it twice), the heatmap's
key-to-frame time per cursor move (the full compositor pass, without terminal I/O) and the cost of
re-rendering every visible heatmap line, and the plan editor's edit-to-prediction time. The terminal
itself adds its own drawing time on top; in practice that is a few ms for a 120×40 frame.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time


async def bench(base: str, models: list[str], size: tuple[int, int], presses: int) -> dict:
    from mergescope.tui.app import MergeScopeApp
    from mergescope.tui.widgets.heatmap import Heatmap
    from mergescope.tui.widgets.plan_editor import PlanEditor

    out: dict = {}
    t0 = time.perf_counter()
    app = MergeScopeApp(base, models, blink=False, remember_set=False)
    async with app.run_test(size=size) as pilot:
        while "first_paint" not in app.timings:
            await pilot.pause(0.005)
            if time.perf_counter() - t0 > 3600:
                raise TimeoutError("no report within an hour")
        out["first_paint_s"] = app.timings["first_paint"] - t0
        out["from_cache"] = bool(app.report.structure.get("from_cache"))
        out["rows"], out["sites"] = len(app.report.rows()), len(app.report.sites)
        await pilot.press("h")
        await pilot.pause()
        hm = app.main.query_one(Heatmap)
        out["grid"] = f"{len(hm.grid.row_labels)}x{len(hm.grid.col_labels)}"
        base_lat = []
        for _ in range(20):  # the pilot's own cost per key: an unbound key
            s = time.perf_counter()
            await pilot.press("f12")
            base_lat.append(time.perf_counter() - s)
        out["pilot_noop_key_ms_median"] = 1000 * statistics.median(base_lat)
        lat = []
        for k in range(presses):
            key = "down" if (k // 40) % 2 == 0 else "up"
            s = time.perf_counter()
            await pilot.press(key)
            lat.append(time.perf_counter() - s)
        out["key_to_frame_ms_median"] = 1000 * statistics.median(lat)
        # a held arrow key: events arrive faster than frames; the cursor must keep up
        from textual import events

        for burst in (60, 60):
            start_row = hm.cursor[0]
            s = time.perf_counter()
            for _ in range(burst):
                app.post_message(events.Key("down" if start_row < len(hm.grid.row_labels) // 2 else "up", None))
            while hm.cursor[0] == start_row or abs(hm.cursor[0] - start_row) < min(
                burst, len(hm.grid.row_labels) // 2 - 1
            ):
                await pilot.pause(0.001)
            await pilot.pause()
            out["held_key_ms_per_row"] = 1000 * (time.perf_counter() - s) / abs(hm.cursor[0] - start_row)
        out["key_to_frame_ms_p95"] = 1000 * sorted(lat)[int(0.95 * len(lat)) - 1]
        s = time.perf_counter()
        await pilot.press("end")
        await pilot.press("home")
        await pilot.press(*["pagedown"] * 5)
        out["jumps_ms_each"] = 1000 * (time.perf_counter() - s) / 7
        # pure render cost: every visible line after the cache is dropped (a metric switch)
        h = hm.size.height
        reps = 20
        s = time.perf_counter()
        for _ in range(reps):
            hm.refresh_all()
            for y in range(h):
                hm.render_line(y)
        out["full_rerender_ms"] = 1000 * (time.perf_counter() - s) / reps
        s = time.perf_counter()
        for _ in range(reps):
            for y in range(h):
                hm.render_line(y)
        out["cached_frame_ms"] = 1000 * (time.perf_counter() - s) / reps
        s = time.perf_counter()
        await pilot.press("c")
        await pilot.press("c")
        out["column_switch_ms"] = 1000 * (time.perf_counter() - s) / 2
        s = time.perf_counter()
        for key in "1234567890":
            await pilot.press(key)
        out["metric_switch_ms"] = 1000 * (time.perf_counter() - s) / 10
        # plan editor: an edit until its prediction is on screen
        await pilot.press("e")
        editor = app.main.query_one(PlanEditor)
        while editor.preds is None:
            await pilot.pause(0.01)
        times = []
        for _ in range(5):
            before = editor.preds
            s = time.perf_counter()
            await pilot.press("plus")
            while editor.preds is before:
                await pilot.pause(0.002)
            times.append(time.perf_counter() - s)
        out["edit_to_whatif_ms_median"] = 1000 * statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--size", default="120x40")
    ap.add_argument("--presses", type=int, default=100)
    a = ap.parse_args(argv)
    w, h = (int(x) for x in a.size.split("x"))
    res = asyncio.run(bench(a.base, a.models, (w, h), a.presses))
    for k, v in res.items():
        print(f"{k:28s} {v:.1f}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
