"""mergekit's own test suite, ported: every config its tests build, merged by mergekit 0.1.5 and by us.

Optional (`-m mergekit`): skipped unless a mergekit 0.1.5 virtualenv is available (see
tests/mergekit_utils.py). Sources: mergekit's tests/test_basic_merges.py, test_tokenizer.py and
test_chat_template.py (tests/test_sparsify.py calls `mergekit.sparsify` directly and builds no config).

Each case is the YAML form of one mergekit test's `MergeConfiguration`, on tiny random checkpoints from
tests/suite_models.py (independent random models, as mergekit's tests use). All mergekit merges run in
one child process up front; each case then checks

- mergekit's own `validate` assertions of that test, on both outputs (token counts, zeroed o_proj, ...);
- the two outputs against each other: tensor names, dtypes and values bit for bit (vocabulary tensors
  row by token string where the vocabulary is merged; tokenizer, vocab_size, chat template).

Explained differences, asserted as such (`Case.explain`; a case that comes out identical passes too):
- mergescope refuses independent random models (`different-base`, a readiness error, documented as
  stricter than mergekit) unless `force_incompatible`: the refusal is checked, the forced merge compared.
- legacy-named LLaVA checkpoints: mergekit 0.1.5 writes only the vision tower and projector, under the
  current names, and drops the language model; we keep every tensor under its input name.
- `ties`: differences only where equal |delta| straddle the density cut (mergekit's unstable argsort).
- `model_stock` (whole tensor, bfloat16): mergekit rounds cos and t to bfloat16, we use a float64 cosine;
  each output lies within FORMULA_TOL of t·mean + (1-t)·base with its own t.
- `nuslerp` flattened (bfloat16): the cosine is summed differently (see `_explain_flat_cosine`).
- `arcee_fusion`, `ramplus_tl` without out_dtype: mergekit writes float32, we bfloat16 = its values rounded.
- `chat_template: chatml`: our template text differs in whitespace; rendered prompts are identical.
- dare_ties and della draw random masks from different generators: same names, dtypes and shapes, and
  the same statistics (fraction of entries left at the base, size of the change).
- refusals: della's epsilon 1.35 (mergekit ValueError) and mergekit's legacy tokenizer mode with
  differing vocabularies (mergekit 0.1.5 raises where its own test expects a merge): we refuse both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.mergekit_utils import (
    MERGEKIT_ARGS,
    compare_states,
    load_dir,
    mergekit_available,
    mergekit_python,
    trim_tie_positions,
)

pytestmark = pytest.mark.mergekit

_OK, _WHY = mergekit_available()
if not _OK:
    pytest.skip(_WHY, allow_module_level=True)

from mergescope.io.errors import InputError  # noqa: E402
from mergescope.merge.plan import Plan  # noqa: E402
from mergescope.merge.run import run_merge  # noqa: E402
from tests import suite_models as sm  # noqa: E402
from tests.mergekit_suite_cases import CASES, EMBEDS, LAYOUTS, Outcome, _vocab  # noqa: E402


# ------------------------------------------------------------------------------------ building & merging
def build_models(root: Path) -> dict[str, Path]:
    """Every checkpoint the cases name, independent random models (fixed seeds), as mergekit's tests use."""
    m = {
        "model_a": sm.make_picollama(root / "model_a", seed=1),
        "model_b": sm.make_picollama(root / "model_b", seed=2),
        "model_c": sm.make_picollama(root / "model_c", seed=3),
        "granite_a": sm.make_picogranite(root / "granite_a", seed=11),
        "granite_b": sm.make_picogranite(root / "granite_b", seed=12),
        "gpt2": sm.make_gpt2(root / "gpt2", seed=21),
        "tok_base": sm.make_tokenized_picollama(root / "tok_base", 64, 64, seed=41),
        "tok_chatml": sm.make_tokenized_picollama(root / "tok_chatml", 66, 64, ("<|im_start|>", "<|im_end|>"), seed=42),
        "tok_padded": sm.make_tokenized_picollama(
            root / "tok_padded", 64, 64, tuple(f"<UNUSED_{i}>" for i in range(4)), seed=43
        ),
    }
    for layout in LAYOUTS:  # the same weights in both layouts
        for i, x in enumerate("abc"):
            m[f"vlm_{x}_{layout}"] = sm.make_picollava(root / f"vlm_{x}_{layout}", seed=31 + i, layout=layout)
    return m


def _resolve(obj, models: dict[str, Path]):
    if isinstance(obj, str) and obj.startswith("@"):
        return str(models[obj[1:]])
    if isinstance(obj, dict):
        return {_resolve(k, models): _resolve(v, models) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, models) for v in obj]
    return obj


# one child process for every mergekit job; unlike mergekit_utils.run_mergekit a job that raises is
# recorded (as "ExceptionType: message") and the next job still runs
_DRIVER = r"""
import json, sys
from mergekit.scripts.run_yaml import main
for cfg, out, args in json.loads(sys.argv[1]):
    try:
        main([cfg, out, *args], standalone_mode=False)
        err = None
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    print("@@" + json.dumps({"out": out, "error": err}), flush=True)
"""


def run_mergekit_each(jobs: list[tuple[Path, Path, tuple]]) -> dict[str, str | None]:
    """{output dir: None, or the exception the job raised}."""
    payload = [[str(c), str(o), [*MERGEKIT_ARGS, *extra]] for c, o, extra in jobs]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [str(mergekit_python()), "-c", _DRIVER, json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    done = {}
    for line in r.stdout.splitlines():
        if line.startswith("@@"):
            d = json.loads(line[2:])
            done[d["out"]] = d["error"]
    if r.returncode != 0 or len(done) != len(jobs):
        raise RuntimeError(f"mergekit driver failed (rc {r.returncode}):\n{r.stderr[-4000:]}")
    return done


def run_mergescope(o: Outcome) -> None:
    """Merge as a user would; when the readiness checks refuse, note the refusal and merge with the flag."""
    try:
        res = run_merge(Plan.load(o.plan), o.ms)
    except InputError as e:
        if "--force-incompatible" not in str(e):
            o.ms_error = f"{type(e).__name__}: {e}"
            return
        o.ms_refusal = str(e)
        shutil.rmtree(o.ms, ignore_errors=True)
        try:
            res = run_merge(Plan.load(o.plan), o.ms, force_incompatible=True)
        except Exception as e2:  # reported by the case
            o.ms_error = f"{type(e2).__name__}: {e2}"
            return
    except Exception as e:  # reported by the case
        o.ms_error = f"{type(e).__name__}: {e}"
        return
    o.ms_warnings = [f"{f.code}: {f.message}" for f in res.findings if f.code != "different-base"]


def merge_all(top: Path, names=None) -> tuple[dict[str, Path], dict[str, Outcome]]:
    """(models, {case: Outcome}): the cases (all, or `names`) merged by both tools under `top`."""
    models = build_models(top / "models")
    outcomes, jobs = {}, []
    for name, case in CASES.items():
        if names is not None and name not in names:
            continue
        d = top / name
        d.mkdir()
        plan = d / "plan.yml"
        plan.write_text(yaml.safe_dump(_resolve(case.config, models), sort_keys=False))
        outcomes[name] = Outcome(case, plan, d / "mergekit", d / "mergescope")
        jobs.append((plan, d / "mergekit", ("--copy-tokenizer",) if case.copy_tokenizer else ()))
    errors = run_mergekit_each(jobs)
    for o in outcomes.values():
        o.mk_error = errors[str(o.mk)]
        run_mergescope(o)
    return models, outcomes


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return merge_all(tmp_path_factory.mktemp("mksuite"))


# ------------------------------------------------------------------------------------ comparisons
def _names(names) -> str:
    """A short account of a set of tensor names: how many under each two-part prefix."""
    groups: dict[str, int] = {}
    for n in sorted(names):
        head = ".".join(n.split(".")[:2])
        groups[head] = groups.get(head, 0) + 1
    return ", ".join(f"{k}.* ({v})" for k, v in groups.items()) or "none"


def _ref(cfg_value: str) -> str:
    return cfg_value[1:]


def _inputs(o: Outcome, models: dict[str, Path], v5: bool) -> tuple[dict | None, list[dict]]:
    """(base state or None, [model states]) of the case, in the compute dtype, names as mergekit writes them."""
    cfg = o.case.config
    dtype = torch.bfloat16 if cfg.get("dtype") == "bfloat16" else torch.float32

    def state(ref: str) -> dict:
        sd = load_dir(models[_ref(ref)])
        return {(sm.llava_v5_name(k) if v5 else k): t.to(dtype) for k, t in sd.items()}

    base = state(cfg["base_model"]) if cfg.get("base_model") else None
    others = [state(m["model"]) for m in cfg["models"] if m["model"] != cfg.get("base_model")]
    return base, others


def _is_legacy_llava(o: Outcome) -> bool:
    return str(o.case.config.get("models", [{}])[0].get("model", "")).endswith("_legacy")


def _reconcile(o: Outcome, mk: dict, ms: dict, models) -> dict:
    """Legacy-named LLaVA inputs: mergekit 0.1.5 writes the vision tower and projector only, renamed to
    transformers' current names, and drops the whole language model (see suite_models.make_picollava);
    we keep every tensor under its input name. Asserts exactly that; returns ours as mergekit names them."""
    if not _is_legacy_llava(o):
        return ms
    inputs = set(load_dir(models[_ref(o.case.config["models"][0]["model"])]))
    assert set(ms) == inputs, f"ours: missing {_names(inputs - set(ms))}, extra {_names(set(ms) - inputs)}"
    kept = {sm.llava_v5_name(k) for k in inputs if not k.startswith("language_model.")}
    assert set(mk) == kept, f"mergekit: expected {_names(kept)}, got {_names(mk)}"
    return {sm.llava_v5_name(k): t for k, t in ms.items() if sm.llava_v5_name(k) in kept}


FORMULA_TOL = 2.5  # bf16 ulps at the tensor's largest magnitude


def _ulps_of_max(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| in bf16 ulps of the tensor's largest |ref| (the scale the roundings work at)."""
    import math

    m = float(ref.abs().max())
    if m == 0:
        return 0.0 if torch.equal(out.double(), ref) else math.inf
    return float((out.double() - ref).abs().max()) / 2.0 ** (math.frexp(m)[1] - 8)


def _check_formulas(name: str, mk: torch.Tensor, ms: torch.Tensor, y_mk: torch.Tensor, y_ms: torch.Tensor) -> str:
    """Each output within FORMULA_TOL of the float64 formula evaluated with its own tool's scalar."""
    e_mk, e_ms = _ulps_of_max(mk, y_mk.reshape(mk.shape)), _ulps_of_max(ms, y_ms.reshape(ms.shape))
    e_x = _ulps_of_max(mk, y_ms.reshape(mk.shape))
    assert e_mk <= FORMULA_TOL and e_ms <= FORMULA_TOL, f"{name}: {e_mk:.2f} / {e_ms:.2f} ulps from the formulas"
    return f"{name}: mergekit {e_mk:.2f}, ours {e_ms:.2f} ulps from their formulas (mergekit vs ours' {e_x:.2f})"


def _explain_stock_t(o, name, mk, ms, base, ws) -> str:
    """model_stock, whole tensor: mergekit computes cos, t = 2cos/(1+cos) and 1 - t in bfloat16 (each
    rounded), we t from a float64 cosine; both then mix t·mean + (1-t)·base."""
    w0 = base[name].reshape(-1)
    off = [w[name].reshape(-1) - w0 for w in ws]
    c_mk = ((off[0] * off[1]).sum() / (off[0].norm() * off[1].norm()).clamp(min=1e-6)).clamp(-1, 1)
    t_mk = (len(ws) * c_mk) / (1 + (len(ws) - 1) * c_mk)  # in the compute dtype, as mergekit
    o64 = [x.double() for x in off]
    c_ms = float(((o64[0] @ o64[1]) / (o64[0].norm() * o64[1].norm()).clamp(min=1e-6)).clamp(-1, 1))
    t_ms = len(ws) * c_ms / (1 + (len(ws) - 1) * c_ms)
    avg = sum(w[name].reshape(-1).double() for w in ws) / len(ws)
    y_mk = float(t_mk) * avg + float(1 - t_mk) * w0.double()
    y_ms = t_ms * avg + (1 - t_ms) * w0.double()
    return _check_formulas(name, mk, ms, y_mk, y_ms) + f"; t {float(t_mk):.5f} vs {t_ms:.5f}"


def _explain_flat_cosine(o, name, mk, ms, base, ws) -> str:
    """nuslerp, flattened: mergekit's cosine is the bfloat16 sum of the products of the bfloat16 unit
    vectors, ours the float32 dot product over the product of the norms (rounded to bfloat16 once)."""
    w = [float(m["parameters"]["weight"]) for m in o.case.config["models"]]
    t = 0.5 if abs(sum(w)) < 1e-6 else w[1] / sum(w)
    b = base[name].reshape(-1) if base is not None else None
    v = [x[name].reshape(-1) - (b if b is not None else 0) for x in ws]
    units = [x / x.norm().clamp(min=1e-7) for x in v]
    c_mk = (units[0] * units[1]).sum().clamp(-1, 1)
    c_ms = (torch.dot(v[0].float(), v[1].float()) / (v[0].norm().float() * v[1].norm().float())).to(v[0].dtype)
    y = []
    for c in (c_mk, c_ms.clamp(-1, 1)):
        th = torch.acos(c.double())
        r = (torch.sin((1 - t) * th) * v[0].double() + torch.sin(t * th) * v[1].double()) / torch.sin(th)
        y.append(r + (b.double() if b is not None else 0))
    return _check_formulas(name, mk, ms, *y) + f"; cos {float(c_mk):.6f} vs {float(c_ms):.6f}"


def _explain_trim_ties(o, name, mk, ms, base, ws) -> str:
    """TIES trim: mergekit ranks |delta| with an unstable argsort, so which of several equal magnitudes at
    the density cut survive is unspecified there; differences only at such tie positions."""
    density = float(o.case.config["parameters"]["density"])
    allowed = trim_tie_positions([w[name] - base[name] for w in ws], [density] * len(ws))
    c = compare_states({name: mk}, {name: ms}, {name: allowed})
    assert c.n_diff_unexcused == 0, f"{name}: {c.summary()}"
    return f"{name}: {c.n_excused} differ, all at the {c.n_allowed} tie positions of the trim"


EXPLAIN = {"stock_t": _explain_stock_t, "flat_cosine": _explain_flat_cosine, "trim_ties": _explain_trim_ties}


def _assert_same_or_explained(o: Outcome, mk: dict, ms: dict, models) -> list[str]:
    """Same names and dtypes, values bit for bit; where they differ, only as `o.case.explain` says."""
    assert set(mk) == set(ms), (
        f"only in mergekit: {_names(set(mk) - set(ms))}; only in ours: {_names(set(ms) - set(mk))}"
    )
    notes = []
    if o.case.explain == "float32_out":
        # no out_dtype: mergekit's float32 mask / lambda promote its bfloat16 result to float32 (README)
        assert {t.dtype for t in mk.values()} == {torch.float32} and {t.dtype for t in ms.values()} == {torch.bfloat16}
        mk = {k: t.to(torch.bfloat16) for k, t in mk.items()}
        notes.append("mergekit float32, ours bfloat16: ours == mergekit's rounded to bfloat16")
    bad = [f"{k}: {mk[k].dtype}{list(mk[k].shape)} vs {ms[k].dtype}{list(ms[k].shape)}" for k in mk]
    bad = [b for k, b in zip(mk, bad) if (mk[k].dtype, mk[k].shape) != (ms[k].dtype, ms[k].shape)]
    assert not bad, bad
    differ = [k for k in mk if not torch.equal(mk[k], ms[k])]
    if differ and o.case.explain in EXPLAIN:
        base, ws = _inputs(o, models, v5=_is_legacy_llava(o))
        notes += [EXPLAIN[o.case.explain](o, k, mk[k], ms[k], base, ws) for k in differ]
    elif differ:
        c = compare_states({k: mk[k] for k in differ}, {k: ms[k] for k in differ})
        raise AssertionError(f"{len(differ)}/{len(mk)} tensors differ: {c.summary()}; worst {c.worst}")
    return notes


def _rows_by_token(d: Path, name: str) -> dict[str, torch.Tensor]:
    t = load_dir(d)[name]
    return {tok: t[i] for tok, i in _vocab(d).items() if i < t.shape[0]}


def _assert_same_by_token(o: Outcome, models) -> list[str]:
    """Vocabulary tensors row by token (ids of added tokens may be assigned differently), the rest bit for bit."""
    mk, ms = load_dir(o.mk), load_dir(o.ms)
    assert set(mk) == set(ms), sorted(set(mk) ^ set(ms))
    rest = _assert_same_or_explained(
        o, {k: v for k, v in mk.items() if k not in EMBEDS}, {k: v for k, v in ms.items() if k not in EMBEDS}, models
    )
    v_mk, v_ms = _vocab(o.mk), _vocab(o.ms)
    assert set(v_mk) == set(v_ms), sorted(set(v_mk) ^ set(v_ms))
    n = len(v_ms)
    for name in EMBEDS:
        assert (mk[name].shape, mk[name].dtype) == (ms[name].shape, ms[name].dtype), name
        a, b = _rows_by_token(o.mk, name), _rows_by_token(o.ms, name)
        assert set(a) == set(b), (name, sorted(set(a) ^ set(b)))
        differ = [t for t in a if not torch.equal(a[t], b[t])]
        assert not differ, f"{name}: rows differ for {differ}"
        assert torch.equal(mk[name][n:], ms[name][n:]), f"{name}: padding rows differ"
    cfg_mk, cfg_ms = (json.loads((d / "config.json").read_text()) for d in (o.mk, o.ms))
    assert cfg_mk.get("vocab_size") == cfg_ms.get("vocab_size"), (cfg_mk.get("vocab_size"), cfg_ms.get("vocab_size"))
    added = [
        sorted((a["content"], a["special"]) for a in json.loads((d / "tokenizer.json").read_text())["added_tokens"])
        for d in (o.mk, o.ms)
    ]
    assert added[0] == added[1], added
    moved = sorted(t for t in v_mk if v_mk[t] != v_ms[t])
    return [*rest, f"{n} tokens, same rows per token" + (f"; ids differ for {moved}" if moved else ", same ids")]


def _random_stats(out: dict, base: dict) -> tuple[float, float]:
    """(fraction of entries equal to the base's, norm of the change)."""
    same = n = 0
    sq = 0.0
    for k, t in out.items():
        b = base[k].to(t.dtype)
        same += int((t == b).sum())
        n += t.numel()
        sq += float((t.float() - b.float()).pow(2).sum())
    return same / n, sq**0.5


def _assert_same_distribution(o: Outcome, mk: dict, ms: dict, models) -> list[str]:
    """Random masks from different generators: same tensors, and the same keep rate and size of change."""
    assert set(mk) == set(ms), (
        f"only in mergekit: {_names(set(mk) - set(ms))}; only in ours: {_names(set(ms) - set(mk))}"
    )
    for k in mk:
        assert (mk[k].dtype, mk[k].shape) == (ms[k].dtype, ms[k].shape), k
    base, _ = _inputs(o, models, v5=_is_legacy_llava(o))
    (f_mk, n_mk), (f_ms, n_ms) = _random_stats(mk, base), _random_stats(ms, base)
    assert abs(f_mk - f_ms) <= 0.01, (f_mk, f_ms)
    assert abs(n_ms / n_mk - 1) <= 0.03, (n_mk, n_ms)
    return [f"entries at the base: mergekit {f_mk:.4f}, ours {f_ms:.4f}; |change| {n_mk:.4f} vs {n_ms:.4f}"]


CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
]


def _assert_same_chat_template(o: Outcome) -> list[str]:
    """Same template text, or (`template_text`: mergescope writes its own chatml) the same rendered prompts."""
    from transformers import AutoTokenizer

    tok_mk, tok_ms = (AutoTokenizer.from_pretrained(str(d)) for d in (o.mk, o.ms))
    if tok_mk.chat_template == tok_ms.chat_template:
        return ["same chat template"]
    assert o.case.explain == "template_text", (tok_mk.chat_template, tok_ms.chat_template)
    for gen in (False, True):
        a, b = (
            t.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen) for t in (tok_mk, tok_ms)
        )
        assert a == b, (gen, a, b)
    return ["template texts differ in whitespace; the rendered prompts are identical"]


def check_case(o: Outcome, models: dict[str, Path]) -> list[str]:
    """Every assertion of one case; returns notes on the explained differences."""
    case = o.case
    notes = []
    if o.ms_refusal is not None:  # explained: the readiness check, documented as stricter than mergekit
        assert "different-base" in o.ms_refusal, o.ms_refusal
        notes.append("ours refuses without force_incompatible (different-base)")
    codes = sorted({w.split(":")[0] for w in o.ms_warnings})
    if codes:
        notes.append(f"our warnings: {', '.join(codes)}")
    if case.kind == "refused":
        assert o.mk_error and o.mk_error.startswith(case.refusal[0]), f"mergekit: {o.mk_error or 'merged'}"
        assert o.ms_error and o.ms_error.startswith(case.refusal[1]), f"mergescope: {o.ms_error or 'merged'}"
        return [*notes, f"mergekit: {o.mk_error}", f"ours: {o.ms_error}"]
    assert o.mk_error is None, f"mergekit: {o.mk_error}"
    assert o.ms_error is None, f"mergescope: {o.ms_error}"
    for d in (o.mk, o.ms):  # mergekit's run_and_check_merge: a model, a config, no NaN
        assert (d / "config.json").is_file(), d
        sd = load_dir(d)
        assert sd, f"{d}: no tensors"
        assert not [k for k, t in sd.items() if t.is_floating_point() and t.isnan().any()], d
        for check in case.validate:
            check(d, models)
    if case.kind == "tokens":
        notes += _assert_same_by_token(o, models)
    else:
        mk, ms = load_dir(o.mk), load_dir(o.ms)
        ms = _reconcile(o, mk, ms, models)
        if _is_legacy_llava(o):
            notes.append(f"mergekit drops the language model ({len(load_dir(o.ms)) - len(mk)} tensors)")
        check = _assert_same_distribution if case.kind == "random" else _assert_same_or_explained
        notes += check(o, mk, ms, models)
    if case.config.get("chat_template"):
        notes += _assert_same_chat_template(o)
    return notes


@pytest.mark.parametrize("name", list(CASES))
def test_same_as_mergekit(suite, name):
    models, outcomes = suite
    print(f"{name}: ports mergekit's tests/{outcomes[name].case.port}")
    for note in check_case(outcomes[name], models):
        print(f"{name}: {note}")


LEGACY_VLM = [n for n, c in CASES.items() if n.startswith("vlm_legacy_") and c.kind != "random"]


@pytest.mark.parametrize("name", LEGACY_VLM)
def test_our_llava_merge_is_the_same_in_both_layouts(suite, name):
    """The same weights saved under legacy and current LLaVA names merge to the same tensors (renamed)."""
    _, outcomes = suite
    legacy, v5 = outcomes[name], outcomes[name.replace("vlm_legacy_", "vlm_v5_")]
    assert legacy.ms_error is None and v5.ms_error is None, (legacy.ms_error, v5.ms_error)
    a = {sm.llava_v5_name(k): t for k, t in load_dir(legacy.ms).items()}
    b = load_dir(v5.ms)
    assert set(a) == set(b), f"{_names(set(a) - set(b))} / {_names(set(b) - set(a))}"
    assert not [k for k in a if not torch.equal(a[k], b[k])]
