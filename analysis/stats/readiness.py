"""The one call the CLI and the TUI make: open, (cache-)analyse, judge.

`analyze()` returns a `Report` with findings; unchanged inputs come back from the cache instantly.
"""

from __future__ import annotations

from collections.abc import Sequence

from mergescope.io import cache
from mergescope.io.checkpoint import open_models
from mergescope.io.device import resolve_device
from mergescope.io.progress import Progress, ShouldStop
from mergescope.stats.findings import collect_meta, findings_for
from mergescope.stats.report import DEFAULT_DENSITY, Report
from mergescope.stats.scan import analyze_checkpoints


def analyze(
    base_path: str,
    model_paths: Sequence[str],
    *,
    density: float = DEFAULT_DENSITY,
    device: str = "cpu",
    use_cache: bool = True,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    labels: Sequence[str] | None = None,
    cache_only: bool = False,
    spectral: int | None = None,
) -> Report | None:
    """Analyse BASE + MODELS (paths); `labels` (base first) name them in the report instead of the paths.
    `cache_only`: return the cached report or None, never compute.
    `spectral=K` adds `report.spectral` (spectral.py, rank K), cached apart from the analysis (so a cached
    analysis is reused and only the spectral pass runs); its SAR weighs the models' task vectors equally."""
    if not model_paths:
        from mergescope.io.errors import InputError

        raise InputError("give at least one fine-tuned MODEL after the BASE")
    if spectral is not None and spectral < 1:
        from mergescope.io.errors import InputError

        raise InputError(f"--rank {spectral}: must be at least 1 (the top-K singular directions; 64 is typical)")
    device = resolve_device(device)
    base, models = open_models(base_path, model_paths, labels)
    key = cache.cache_key(base, models, density=density) if use_cache else None
    report = _from_cache(key) if key else None
    if report is not None:
        report = _relabeled(report, [base, *models])
    if report is None:
        if cache_only:
            return None
        report = analyze_checkpoints(
            base, models, density=density, device=device, progress=progress, should_stop=should_stop
        )
        report.structure["meta"] = {ck.label: collect_meta(ck) for ck in [base, *models]}
        report.findings = findings_for(report)
        if key:
            cache.store(key, report.to_json())
        report.structure["from_cache"] = False
    if spectral is not None:
        report.spectral = _spectral(
            base,
            models,
            spectral,
            device=device,
            use_cache=use_cache,
            cache_only=cache_only,
            progress=progress,
            should_stop=should_stop,
        )
        report.findings = findings_for(report)  # now with the spectral pass's
    return report


def _spectral(base, models, rank, *, device, use_cache, cache_only, progress, should_stop):
    """The spectral result at `rank`: from its own cache entry (keyed by the inputs and K, not by the
    density), else computed and stored; None when `cache_only` finds none."""
    from mergescope.stats.spectral import FORMAT, SpectralResult, analyze_spectral

    key = None
    if use_cache:
        key = cache.cache_key(base, models, spectral_rank=rank, spectral_format=FORMAT, weights=None)
        data = cache.load(key)
        if data is not None:
            try:
                res = SpectralResult.from_json(data, [m.label for m in models])
                res.from_cache = True
                return res
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                pass  # recomputed and overwritten
    if cache_only:
        return None
    res = analyze_spectral(
        base,
        models,
        rank=rank,
        device=device,
        progress=progress,
        should_stop=should_stop,
    )
    if key:
        cache.store(key, res.to_json())
    return res


def _from_cache(key: str) -> Report | None:
    """The cached report, or None when the entry is missing or does not read back as one (then it is
    recomputed and overwritten: a cache entry is never trusted beyond what it proves)."""
    data = cache.load(key)
    if data is None:
        return None
    try:
        report = Report.from_json(data)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None
    report.structure["from_cache"] = True
    report.findings = findings_for(report)  # the rules of this version, not those the entry was judged by
    return report


def _relabeled(report: Report, cks) -> Report:
    """A cached report under the labels its inputs have now (the cache is keyed by the files, so the
    same models named by other paths hit it): the labels, the per-model facts filed under them, the
    metadata read again (it holds the paths) and the findings judged again (they name the models)."""
    old, new = [report.base, *report.models], [ck.label for ck in cks]
    if old == new:
        return report
    rename = dict(zip(old, new))
    report.base, report.models = new[0], new[1:]
    for k, v in list(report.structure.items()):
        if isinstance(v, dict) and any(x in rename for x in v):
            report.structure[k] = {rename.get(x, x): y for x, y in v.items()}
    report.structure["meta"] = {ck.label: collect_meta(ck) for ck in cks}
    report.findings = findings_for(report)
    return report


def analysis_for_plan(
    plan,
    *,
    compute: bool = False,
    density: float = DEFAULT_DENSITY,
    device: str = "cpu",
    progress: Progress | None = None,
) -> Report | None:
    """The merge-readiness report of a plan's base and models, labelled by the plan's references:
    from the cache (as `mergescope analyze` with the same paths left it), or computed when asked.
    None for plans without a base or with `BASE+ADAPTER` references."""
    base = plan.base_model
    refs = [m for m in plan.input_models() if m != base]
    if not base or not refs or any("+" in r and not plan.model_path(r).exists() for r in [base, *refs]):
        return None
    return analyze(
        str(plan.model_path(base)),
        [str(plan.model_path(r)) for r in refs],
        density=density,
        device=device,
        labels=[base, *refs],
        cache_only=not compute,
        progress=progress,
    )
