"""RatioTable: the cut into bands, the one plan a table writes and reads back, the value in force,
and one model set in every cell."""

import pytest

from mergescope.io.errors import InputError
from mergescope.io.naming import site_of
from mergescope.merge.plan import Plan, plan_from_group_ratios
from mergescope.merge.plan.ratio_table import BAND_MODES, RatioTable, band_label, make_bands
from tests.ckpt_utils import llama_shapes

N = 6
NAMES = list(llama_shapes(N, 8, 16))


def _distinct(mode: int, params=("weight", "density"), n_models: int = 2) -> RatioTable:
    """A table whose every cell differs from every other (so no two bands read back as one)."""
    table = RatioTable.uniform({p: 0.0 for p in params}, n_models, N, mode)
    for k, p in enumerate(params):
        for j, key in enumerate(table.keys()):
            table.values[p][key] = [round(0.01 + 0.1 * k + 0.003 * j + 0.001 * i, 6) for i in range(n_models)]
    return table


def test_bands_cut_every_layer_once():
    assert make_bands(6, 1) == [(0, 6)]
    assert make_bands(6, 4) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert make_bands(7, 3) == [(0, 2), (2, 5), (5, 7)]
    assert make_bands(3, 6) == make_bands(3, 0) == [(0, 1), (1, 2), (2, 3)]  # at most one band per layer
    assert make_bands(0, 3) == []
    for n in range(1, 9):
        for mode in BAND_MODES:
            cut = make_bands(n, mode)
            assert [layer for a, b in cut for layer in range(a, b)] == list(range(n)), (n, mode)
    assert (band_label((2, 3)), band_label((0, 4))) == ("L2", "L0-3")
    table = RatioTable(2, N, band_mode=2)
    assert table.keys() == [
        ("embed", None),
        ("attn", (0, 3)),
        ("mlp", (0, 3)),
        ("norm", (0, 3)),
        ("attn", (3, 6)),
        ("mlp", (3, 6)),
        ("norm", (3, 6)),
        ("norm", None),
        ("head", None),
        ("other", None),
    ]
    assert table.keys(other=False) == table.keys()[:-1]
    assert set(RatioTable.uniform({"weight": 0.5}, 2, N, 2).values["weight"]) == set(table.keys())
    assert table.in_use(("attn", (3, 6))) and not table.in_use(("attn", (0, 2))) and table.in_use(("head", None))


@pytest.mark.parametrize("mode", BAND_MODES)
def test_table_to_plan_yaml_and_back_is_the_same_table(mode):
    table = _distinct(mode)
    plan = table.to_plan("ties", "base", ["a", "b"], parameters={"lambda": 0.9}, names=NAMES, dtype="float32")
    text = plan.to_yaml()
    back = RatioTable.from_plan(Plan.from_yaml(text), ["weight", "density"], n_layers=N)
    assert back.bands() == table.bands()
    assert back.values == table.values
    again = back.to_plan("ties", "base", ["a", "b"], parameters={"lambda": 0.9}, names=NAMES, dtype="float32")
    assert again.to_yaml() == text  # byte for byte
    # each parameter is exactly the filter list plan_from_group_ratios writes for its table alone
    for p in ("weight", "density"):
        alone = plan_from_group_ratios(
            "ties",
            "base",
            ["a", "b"],
            table.values[p],
            num_layers=N,
            param=p,
            names=NAMES,
            other=table.values[p][("other", None)],
        )
        assert [m.parameters[p] for m in plan.models] == [m.parameters[p] for m in alone.models]


def test_the_written_plan_gives_every_tensor_the_value_in_force():
    table = _distinct(3)
    plan = Plan.from_yaml(table.to_plan("ties", "base", ["a", "b"], names=NAMES).to_yaml())
    for name in NAMES:
        site = site_of(name)
        resolved = plan.resolve(name, num_layers=N)
        for i, m in enumerate(["a", "b"]):
            for p in ("weight", "density"):
                want = table.value_in_force(p, site.layer, site.group, i)
                assert resolved.model_params[m][p] == pytest.approx(want, abs=1e-12), (name, p)


def test_value_in_force_falls_back_to_other_then_the_default():
    table = RatioTable(
        2, N, 2, {"weight": {("attn", (0, 3)): [0.2, 0.3], ("other", None): [0.7, 0.8]}}, {"density": 0.5}
    )
    assert table.value_in_force("weight", 1, "attn", 1) == 0.3
    assert table.value_in_force("weight", 4, "attn", 0) == 0.7  # no band holds layer 4: the catch-all
    assert table.value_in_force("weight", 0, "mlp", 1) == 0.8
    assert table.value_in_force("weight", None, "embed", 0) == 0.7
    assert table.value_in_force("density", 2, "attn", 0) == 0.5  # no table: the parameter's default
    assert table.value_in_force("gamma", 2, "attn", 0) == 1.0
    table.values["weight"].pop(("other", None))
    assert table.value_in_force("weight", 4, "attn", 0) == 1.0


def test_recut_keeps_every_layers_value_where_the_cut_allows():
    table = _distinct(0, params=("weight",))  # one band per layer
    finer = table.recut(2).recut(0)  # halves take each half's first layer
    for layer in range(N):
        for g in ("attn", "mlp", "norm"):
            first = 0 if layer < 3 else 3
            assert finer.value_in_force("weight", layer, g, 1) == table.value_in_force("weight", first, g, 1)
    assert {k: v for k, v in finer.values["weight"].items() if k[1] is None} == {
        k: v for k, v in table.values["weight"].items() if k[1] is None
    }
    # a plan with a scalar: the catch-all only, every band reads it; the first cut that fits is one band
    plan = Plan.from_dict(
        {"merge_method": "ties", "base_model": "base", "models": [{"model": "a", "parameters": {"weight": 0.4}}]}
    )
    read = RatioTable.from_plan(plan, ["weight"], n_layers=N)
    assert read.band_mode == 1 and read.values["weight"] == {
        ("other", None): [0.4],
        ("attn", (0, 6)): [0.4],
        ("mlp", (0, 6)): [0.4],
        ("norm", (0, 6)): [0.4],
    }
    assert read.full().values["weight"] == RatioTable.uniform({"weight": 0.4}, 1, N, 1).values["weight"]


def test_from_plan_spreads_a_top_level_value_and_leaves_out_optional_parameters():
    plan = Plan.from_dict(
        {
            "merge_method": "ties",
            "base_model": "base",
            "parameters": {"weight": 0.6},
            "models": [
                {"model": "a", "parameters": {"density": [{"filter": "q_proj", "value": 0.3}, {"value": 0.5}]}},
                {"model": "b", "parameters": {"density": 0.5}},
            ],
        }
    )
    read = RatioTable.from_plan(plan, ["weight", "density"], n_layers=N, band_mode=3, optional=["density"])
    assert list(read.values) == ["weight"] and read.n_models == 2
    assert all(v == [0.6, 0.6] for v in read.values["weight"].values())
    with pytest.raises(InputError, match="q_proj"):
        RatioTable.from_plan(plan, ["density"], n_layers=N)


def test_set_model_sets_every_cell_of_one_model_and_nothing_else():
    plan = Plan.from_dict(
        {
            "merge_method": "ties",
            "base_model": "base",
            "models": [
                {
                    "model": "a",
                    "parameters": {"weight": [{"filter": "self_attn", "value": [0.1, 0.9]}, {"value": 0.5}]},
                },
                {"model": "b", "parameters": {"weight": [{"filter": "self_attn", "value": 0.3}, {"value": 0.7}]}},
            ],
        }
    )
    table = RatioTable.from_plan(plan, ["weight"], n_layers=N, band_mode=3)
    before = {
        (layer, g): table.value_in_force("weight", layer, g, 1)
        for layer in [None, *range(N)]
        for g in ("attn", "mlp", "norm", "embed", "head")
    }
    table.set_model("weight", 0, 0.25)
    assert set(table.keys()) <= set(table.values["weight"])  # every cell of the cut is held now
    for (layer, g), v in before.items():
        assert table.value_in_force("weight", layer, g, 0) == 0.25
        assert table.value_in_force("weight", layer, g, 1) == v  # the other model keeps what it had
    written = table.to_plan("ties", "base", ["a", "b"], names=NAMES)
    assert {e["value"] for e in written.models[0].parameters["weight"]} == {0.25}
    table.set_model("density", 1, 0.4)  # a parameter the table did not hold yet: the others at its default
    assert table.values["density"][("mlp", (2, 4))] == [1.0, 0.4]


def test_select_keeps_the_chosen_models_and_the_current_cut():
    table = _distinct(2)
    table.values["weight"][("attn", (0, 1))] = [9.0, 9.0]  # a band of another cut: not written
    sel = table.select([1], ["density", "weight", "gamma"])
    assert list(sel.values) == ["density", "weight"] and sel.n_models == 1
    assert ("attn", (0, 1)) not in sel.values["weight"]
    assert sel.values["weight"][("mlp", (3, 6))] == table.values["weight"][("mlp", (3, 6))][1:]
    plan = sel.to_plan("ties", "base", ["b"], names=NAMES)
    assert list(plan.models[0].parameters) == ["density", "weight"]
    with pytest.raises(InputError, match="weight: ratios"):
        table.select([0, 1], ["weight"]).to_plan("ties", "base", ["a"], names=NAMES)  # two values, one model
