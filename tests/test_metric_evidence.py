"""scripts/metric_evidence.py's bookkeeping: rank correlations with ties, the within-set reading, families."""

import math

import pytest
from metric_evidence import FAMILIES, correlations, family_paths, spearman


def test_spearman_ranks_ties_and_constants():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894, abs=1e-3)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_within_set_is_nan_where_a_prediction_cannot_tell_methods_apart():
    rows = []
    for s, (members, base_gap) in enumerate([(["a", "b"], 0.1), (["a", "c"], 0.3), (["b", "c"], 0.2)]):
        for k, method in enumerate(("m1", "m2")):
            rows.append(
                {
                    "members": members,
                    "method": method,
                    "gap": base_gap + 0.05 * k,
                    "predicted": {"same_per_set": base_gap, "grows_with_method": float(k) + s / 10},
                }
            )
    t = correlations(rows, "predicted", ["m1", "m2"])
    assert t["same_per_set"]["pooled"] > 0.8 and t["same_per_set"]["m1"] == pytest.approx(1.0)
    assert math.isnan(t["same_per_set"]["within_set"])
    assert t["grows_with_method"]["within_set"] == pytest.approx(1.0)


def test_families_and_their_paths(tmp_path):
    assert set(FAMILIES) == {"demo", "second"}
    assert all(len(set(v.values())) == 3 for v in FAMILIES.values())  # three texts, one soup ingredient
    fam, held = family_paths("demo", None)
    assert all((fam / m).is_dir() for m in FAMILIES["demo"]) and held.is_dir()
    with pytest.raises(SystemExit, match="needs --dir"):
        family_paths("second", None)
    with pytest.raises(SystemExit, match="missing"):
        family_paths("second", str(tmp_path))
