"""The what-if model: predictions from a Report against merges computed from the tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergescope.io.checkpoint import open_checkpoint
from mergescope.io.naming import site_of
from mergescope.merge.plan import plan_from_group_ratios
from mergescope.merge.whatif import coefficients, from_plan, method_note, uniform_density
from mergescope.stats.readiness import analyze
from tests.ckpt_utils import L, make_family


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("wi")
    base, models = make_family(root, dtype=torch.float32, n_models=3)
    report = analyze(str(base), [str(m) for m in models], use_cache=False)
    return str(base), [str(m) for m in models], report


def _cell_sites(report, layer, group):
    return [s for s in report.sites if s.layer == layer and s.group == group]


def _actual(base, models, coeffs_of):
    """Per cell: ‖Σ cᵢ(name)·τᵢ‖ from the tensors, in float64."""
    b = open_checkpoint(base)
    ms = [open_checkpoint(m) for m in models]
    sums: dict = {}
    for name in b.names():
        t0 = b.get(name).double()
        delta = sum(c * (m.get(name).double() - t0) for c, m in zip(coeffs_of(name), ms))
        s = site_of(name)
        sums[(s.layer, s.group)] = sums.get((s.layer, s.group), 0.0) + float((delta**2).sum())
    return {k: math.sqrt(v) for k, v in sums.items()}


RATIOS = {
    ("embed", None): [1.0, 0.5],
    ("head", None): [0.8, 0.2],
    ("norm", None): [0.5, 0.5],
    ("attn", (0, 1)): [0.9, 0.1],
    ("attn", (1, L)): [0.3, 0.7],
    ("mlp", (0, L)): [0.4, 0.6],
    ("norm", (0, L)): [0.5, 0.5],
}


def _weights_of(name):
    s = site_of(name)
    if s.layer is None:
        return RATIOS[(s.group, None)]
    band = (0, 1) if s.group == "attn" and s.layer == 0 else ((1, L) if s.group == "attn" else (0, L))
    return RATIOS[(s.group, band)]


def test_task_arithmetic_prediction_is_exact(fam):
    base, models, report = fam
    plan = plan_from_group_ratios("task_arithmetic", base, models[:2], RATIOS, num_layers=L, parameters={"lambda": 0.8})
    wi = from_plan(report, plan)
    actual = _actual(base, models, lambda name: [0.8 * w for w in _weights_of(name)] + [0.0])
    for (layer, group), norm in actual.items():
        p = wi.cell(_cell_sites(report, layer, group))
        assert p.merged_norm == pytest.approx(norm, rel=1e-6)
        agg = report.cell(layer, group)
        assert p.merged_relative_norm == pytest.approx(norm / agg.base_norm, rel=1e-6)
        assert p.coeff[2] == 0 and p.share[2] == 0
        assert p.share.sum() == pytest.approx(1.0)
        assert 0 < p.retained <= 1 + 1e-9
    p = wi.cell(_cell_sites(report, 0, "attn"))
    assert p.weight[:2] == pytest.approx([0.9, 0.1])
    assert p.coeff[:2] == pytest.approx([0.72, 0.08])
    assert "exact" in wi.note


def test_linear_normalizes_and_matches_the_tensors(fam):
    base, models, report = fam
    plan = plan_from_group_ratios("linear", None, models, {("other", None): [1.0, 2.0, 1.0]}, num_layers=L)
    wi = from_plan(report, plan)
    actual = _actual(base, models, lambda name: [0.25, 0.5, 0.25])
    for (layer, group), norm in actual.items():
        assert wi.cell(_cell_sites(report, layer, group)).merged_norm == pytest.approx(norm, rel=1e-6)


def test_retained_mass_is_one_for_a_single_model_and_shares_follow_weights(fam):
    base, models, report = fam
    plan = plan_from_group_ratios("task_arithmetic", base, models[:1], {("other", None): [1.0]}, num_layers=L)
    wi = from_plan(report, plan)
    p = wi.cell(report.sites)
    assert p.retained == pytest.approx(1.0)
    assert p.share[0] == pytest.approx(1.0)
    whole = report.whole()
    assert p.merged_relative_norm == pytest.approx(whole.relative_norm(0), rel=1e-9)


def test_cancellation_lowers_retained_mass(fam):
    base, models, report = fam
    same = from_plan(
        report, plan_from_group_ratios("task_arithmetic", base, models[:2], {("other", None): [1.0, 1.0]}, num_layers=L)
    ).cell(report.sites)
    opposite = from_plan(
        report,
        plan_from_group_ratios("task_arithmetic", base, models[:2], {("other", None): [1.0, -1.0]}, num_layers=L),
    ).cell(report.sites)
    cos = report.whole().cosine(0, 1)
    assert cos > 0  # make_family's models share a direction...
    assert opposite.retained < same.retained  # ...so subtracting one cancels more than adding it


def test_ties_density_and_note(fam):
    base, models, report = fam
    plan = plan_from_group_ratios("ties", base, models[:2], {("other", None): [0.5, 0.5]}, num_layers=L)
    for m in plan.models:
        m.parameters["density"] = 0.4
    wi = from_plan(report, plan)
    assert uniform_density(wi) == pytest.approx(0.4)
    assert "not modelled" in wi.note
    p = wi.cell(_cell_sites(report, 1, "mlp"))
    assert p.coeff[:2] == pytest.approx([0.5, 0.5])  # ties normalizes by Σw = 1
    assert p.density[:2] == pytest.approx([0.4, 0.4]) and math.isnan(p.density[2])
    agg = report.cell(1, "mlp")
    assert p.trimmed_sign_conflict == pytest.approx(agg.trimmed_sign_conflict)
    assert p.measured_density == report.density
    assert p.conflict_trimmed and p.conflict == p.trimmed_sign_conflict  # ties trims by magnitude
    assert p.sign_conflict == pytest.approx(agg.sign_conflict)
    ta = from_plan(
        report, plan_from_group_ratios("task_arithmetic", base, models[:2], {("other", None): [1, 1]}, num_layers=L)
    ).cell(_cell_sites(report, 1, "mlp"))
    assert not ta.conflict_trimmed and ta.conflict == pytest.approx(agg.sign_conflict)


def test_conflict_report_replaces_the_measured_density(fam, tmp_path, monkeypatch):
    base, models, report = fam
    monkeypatch.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path))
    other = analyze(base, models, density=0.5)
    plan = plan_from_group_ratios("ties", base, models[:2], {("other", None): [0.5, 0.5]}, num_layers=L)
    wi = from_plan(report, plan, conflict_report=other)
    p = wi.cell(_cell_sites(report, 1, "mlp"))
    assert p.measured_density == 0.5
    assert p.trimmed_sign_conflict == pytest.approx(other.cell(1, "mlp").trimmed_sign_conflict)


def test_coefficients_per_method():
    mp = [{"weight": 1.0}, {"weight": 3.0}, None]
    assert coefficients("task_arithmetic", {"normalize": False, "lambda": 2.0}, mp).coeff.tolist() == [2.0, 6.0, 0.0]
    assert coefficients("ties", {"normalize": True, "lambda": 1.0}, mp).coeff.tolist() == [0.25, 0.75, 0.0]
    assert coefficients("linear", {"normalize": True}, mp, base_param={"weight": 4.0}).coeff.tolist() == [
        0.125,
        0.375,
        0.0,
    ]
    assert coefficients("slerp", {"t": 0.3}, [{}, None]).coeff.tolist() == [0.3, 0.0]
    st = coefficients("model_stock", {}, [{}, {}], cosine=0.5).coeff
    assert st.tolist() == pytest.approx([1 / 3, 1 / 3])  # t = 2·0.5/(1+0.5) = 2/3, over 2 models
    assert coefficients("passthrough", {}, [{"scale": 0.5}]).coeff.tolist() == [0.5]
    for m in ("linear", "ties", "slerp", "model_stock", "dare_linear", "passthrough", "unknown"):
        assert method_note(m)


def test_whatif_does_not_import_textual():
    import subprocess
    import sys

    code = (
        "import sys, mergescope.merge.whatif; sys.exit(1 if any(m.startswith('textual') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unknown_models_are_reported(fam, tmp_path):
    base, models, report = fam
    from mergescope.merge.plan import ModelEntry, Plan

    plan = Plan(
        "task_arithmetic",
        base_model=base,
        models=[ModelEntry(models[0], {"weight": 1.0}), ModelEntry(str(tmp_path / "elsewhere"), {"weight": 1.0})],
    )
    wi = from_plan(report, plan)
    assert wi.warnings and "elsewhere" in wi.warnings[0]
    assert np.all(wi.cell(report.sites).coeff[1:] == 0)
