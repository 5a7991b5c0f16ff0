"""Executor, writer and `mergescope merge`: outputs against independent computations, sharding, atomicity."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from mergescope.io.errors import InputError
from mergescope.io.guard import MARKER
from mergescope.io.progress import Cancelled
from mergescope.io.units import parse_size
from mergescope.merge import methods
from mergescope.merge.methods.base import BaseUse, Linear, MergeMethod, ParamSpec
from mergescope.merge.output import ModelWriter
from mergescope.merge.plan import Plan
from mergescope.merge.run import MergeError, run_merge
from mergescope.tui.cli import main
from tests.ckpt_utils import load_state, lora_delta, make_finetune, make_llama, make_lora

N_LAYERS = 4


@pytest.fixture
def family(tmp_path, monkeypatch):
    """base (bf16), ft1 (bf16), ft2 (bf16, 3 shards), a LoRA adapter on q/v; cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    base = make_llama(tmp_path / "base", n_layers=N_LAYERS, hidden=16, vocab=32, dtype=torch.bfloat16, seed=0)
    make_finetune(base, tmp_path / "ft1", scale=0.05, seed=1)
    make_finetune(base, tmp_path / "ft2", scale=0.05, seed=2, shards=3)
    make_lora(base, tmp_path / "lora", rank=2, seed=3)
    return tmp_path


def _no_leftovers(parent: Path, name: str):
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


TA_PLAN = """\
merge_method: task_arithmetic
base_model: base
models:
  - model: ft1
    parameters:
      weight: [0.2, 1.0]
  - model: ft2
    parameters:
      weight:
        - filter: self_attn
          value: 0.7
        - filter: lm_head
          value: -0.5
        - value: 0.3
  - model: lora
    parameters:
      weight: 0.5
"""


def _ta_weights(name: str) -> list[float]:
    """Hand-computed mergekit weights: t = layer/(n-1) for block tensors, 0 for embed/norm/head."""
    parts = name.split(".")
    t = int(parts[2]) / (N_LAYERS - 1) if parts[1] == "layers" else 0.0
    w1 = 0.2 + 0.8 * t
    w2 = 0.7 if "self_attn" in name else (-0.5 if "lm_head" in name else 0.3)
    return [w1, w2, 0.5]


def test_cli_task_arithmetic_bf16_sharded_and_lora_matches_independent_computation(family, capsys):
    (family / "plan.yml").write_text(TA_PLAN)
    rc = main(["merge", "plan.yml", "out", "--shard-size", "4KB", "--seed", "0"])
    assert rc == 0, capsys.readouterr().err
    assert "out" in capsys.readouterr().out
    base, ft1, ft2 = (load_state(family / d) for d in ("base", "ft1", "ft2"))
    delta = lora_delta(family / "lora")
    out = load_state(family / "out")
    assert set(out) == set(base)
    for name, b in base.items():
        b32 = b.float()
        lora_t = b32 + delta[name] if name in delta else b32
        w = _ta_weights(name)
        want = b32 + w[0] * (ft1[name].float() - b32) + w[1] * (ft2[name].float() - b32) + w[2] * (lora_t - b32)
        assert out[name].dtype == torch.bfloat16
        torch.testing.assert_close(out[name].float(), want.to(torch.bfloat16).float(), rtol=8e-3, atol=1e-6)
    # files: shards + index, config, tokenizer, plan, card
    index = json.loads((family / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(base)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    for shard in shards:
        held = set(load_state(family / "out" / shard))
        assert held == {n for n, s in index["weight_map"].items() if s == shard}
        assert (family / "out" / shard).stat().st_size < 4000 + 2000  # one shard's data + its header
    cfg = json.loads((family / "out" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == N_LAYERS and cfg["torch_dtype"] == "bfloat16"
    assert (family / "out" / "tokenizer.json").read_bytes() == (family / "base" / "tokenizer.json").read_bytes()
    assert Plan.load(family / "out" / "merge_plan.yml") == Plan.load(family / "plan.yml")
    card = (family / "out" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"][0] == "base" and front["tags"] == ["merge", "mergescope"]
    assert "merge_method: task_arithmetic" in card and "sha256" in card
    import hashlib

    assert hashlib.sha256((family / "ft1" / "model.safetensors").read_bytes()).hexdigest() in card


def test_linear_fp16_out_dtype_and_single_shard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = make_llama(tmp_path / "base", n_layers=2, hidden=8, vocab=16, dtype=torch.float16, seed=0)
    make_finetune(base, tmp_path / "a", scale=0.005, seed=1)
    make_finetune(base, tmp_path / "b", scale=0.005, seed=2)
    (tmp_path / "p.yml").write_text(
        "merge_method: linear\nmodels:\n- model: a\n  parameters: {weight: 3}\n"
        "- model: b\n  parameters: {weight: 1}\nout_dtype: float32\n"
    )
    res = run_merge(Plan.load(tmp_path / "p.yml"), tmp_path / "out")
    assert res.shards == ["model.safetensors"] and not (tmp_path / "out" / "model.safetensors.index.json").exists()
    a, b, out = load_state(tmp_path / "a"), load_state(tmp_path / "b"), load_state(tmp_path / "out")
    for name in a:
        assert out[name].dtype == torch.float32
        torch.testing.assert_close(out[name], (3 * a[name].float() + b[name].float()) / 4, rtol=1e-6, atol=1e-7)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"


def test_passthrough_slices_stack_layers_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_llama(tmp_path / "a", n_layers=3, hidden=8, vocab=16, dtype=torch.bfloat16, seed=0)
    make_llama(tmp_path / "b", n_layers=3, hidden=8, vocab=16, dtype=torch.bfloat16, seed=1)
    (tmp_path / "p.yml").write_text(
        "merge_method: passthrough\nslices:\n- sources:\n  - model: a\n    layer_range: [0, 2]\n"
        "- sources:\n  - model: b\n    layer_range: [1, 3]\n"
    )
    run_merge(tmp_path / "p.yml", tmp_path / "out")
    a, b, out = load_state(tmp_path / "a"), load_state(tmp_path / "b"), load_state(tmp_path / "out")
    assert torch.equal(out["model.layers.1.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(out["model.layers.2.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(out["model.layers.3.self_attn.q_proj.weight"], b["model.layers.2.self_attn.q_proj.weight"])
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(out["lm_head.weight"], b["lm_head.weight"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 4


def test_seeded_random_method_is_reproducible(family):
    (family / "p.yml").write_text(
        "merge_method: dare_ties\nbase_model: base\nmodels:\n- model: ft1\n"
        "  parameters: {weight: 1, density: 0.5}\n- model: ft2\n  parameters: {weight: 1, density: 0.5}\n"
    )
    run_merge(family / "p.yml", family / "o1", seed=7)
    run_merge(family / "p.yml", family / "o2", seed=7)
    o1, o2 = load_state(family / "o1"), load_state(family / "o2")
    assert all(torch.equal(o1[k], o2[k]) for k in o1)


# --------------------------------------------------------------------------------- atomicity


def _boom_method(fail_at: int, exc=RuntimeError):
    calls = {"n": 0}

    def merge(base, tensors, model_params, params, ctx):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise exc("boom")
        return tensors[0].clone()

    return MergeMethod(
        name="boom",
        merge=merge,
        base=BaseUse.INPUT,
        linear=Linear.WEIGHTED_MEAN,
        params=(ParamSpec("weight", 1.0, per_model=True),),
    )


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_write_leaves_nothing(family, monkeypatch, exc):
    monkeypatch.setitem(methods.REGISTRY, "boom", _boom_method(30, exc))
    plan = Plan.from_yaml("merge_method: boom\nmodels:\n- model: ft1\n")
    with pytest.raises(MergeError if exc is RuntimeError else KeyboardInterrupt):
        run_merge(plan, family / "out", shard_size="2KB")  # several shards are on disk when it fails
    _no_leftovers(family, "out")


def test_cancel_leaves_nothing_and_keeps_existing_output(family):
    plan = Plan.from_yaml("merge_method: linear\nmodels:\n- model: ft1\n  parameters: {weight: 1}\n")
    (family / "out").mkdir()
    (family / "out" / "keep.txt").write_text("old")
    (family / "out" / MARKER).write_text("")  # an earlier output: --force may replace it
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 20

    with pytest.raises(Cancelled):
        run_merge(plan, family / "out", force=True, shard_size="1KB", should_stop=should_stop)
    assert (family / "out" / "keep.txt").read_text() == "old"
    assert not [p.name for p in family.iterdir() if p.name.startswith(".out.")]
    _no_leftovers(family, "out2")


def test_refuse_non_empty_output_without_force(family, capsys):
    plan = Plan.from_yaml("merge_method: linear\nmodels:\n- model: ft1\n  parameters: {weight: 1}\n")
    (family / "out").mkdir()
    (family / "out" / "x").write_text("x")
    with pytest.raises(InputError, match=r"out: output directory exists and is not empty.*--force"):
        run_merge(plan, family / "out")
    with pytest.raises(InputError, match=r"mergescope did not write it \(it holds x\).*--force replaces only"):
        run_merge(plan, family / "out", force=True)
    (family / "out" / MARKER).write_text("")  # an output mergescope wrote: --force replaces it
    assert (family / "out" / "x").exists()
    run_merge(plan, family / "out", force=True)
    assert not (family / "out" / "x").exists() and (family / "out" / "model.safetensors").exists()
    (family / "empty").mkdir()
    run_merge(plan, family / "empty")  # an existing empty directory is fine
    with pytest.raises(InputError, match="ft1: would overwrite the input"):
        run_merge(plan, family / "ft1", force=True)
    (family / "plan.yml").write_text("merge_method: linear\nmodels:\n- model: ft1\n  parameters: {weight: 1}\n")
    assert main(["merge", "plan.yml", "out"]) == 2
    assert "--force" in capsys.readouterr().err


def test_cuda_unavailable_is_input_error(family, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = Plan.from_yaml("merge_method: linear\nmodels:\n- model: ft1\n  parameters: {weight: 1}\n")
    with pytest.raises(InputError, match="CUDA is not available"):
        run_merge(plan, family / "out", device="cuda")
    _no_leftovers(family, "out")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("merge_method: [ties\n", "plan.yml: not valid YAML at line 2"),
        (
            "merge_method: ties\nbase_model: base\nmodels:\n- model: ft1\n  parameters: {weight: 1, densty: 0.2}\n",
            "models[0].parameters.densty: unknown parameter for ties; did you mean `density`?",
        ),
        (
            "merge_method: ties\nbase_model: base\nmodels:\n- model: nowhere\n  parameters: {weight: 1}\n",
            "models[0].model: nowhere: no such file or directory",
        ),
    ],
)
def test_cli_bad_plan_exit_2_one_line(family, capsys, text, needle):
    (family / "plan.yml").write_text(text)
    assert main(["merge", "plan.yml", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mergescope merge: error: ") and needle in err[0], err
    _no_leftovers(family, "out")


# --------------------------------------------------------------------------------- writer


def test_writer_shards_bounded_and_renamed(tmp_path):
    with ModelWriter(tmp_path / "w", shard_size=2500) as w:
        for i in range(10):
            w.add(f"t{i}", torch.full((250,), float(i)))  # 1000 bytes each
            assert w._current_bytes <= 2500
        res = w.finish(config={"a": 1})
    assert res.shards == [f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)]
    index = json.loads((tmp_path / "w" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["t3"] == "model-00002-of-00005.safetensors"
    out = load_state(tmp_path / "w")
    assert all(torch.equal(out[f"t{i}"], torch.full((250,), float(i))) for i in range(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("2GiB") == 2 * 2**30
    with pytest.raises(InputError, match="--shard-size '5 parsecs'"):
        parse_size("5 parsecs")


def test_writer_planned_mode_writes_the_same_shards_without_buffering(tmp_path):
    tensors = [
        (f"t{i}", torch.full((250 + 50 * (i % 3),), float(i), dtype=torch.bfloat16 if i % 2 else torch.float32))
        for i in range(9)
    ]
    tensors.append(("empty", torch.zeros(0)))
    files = {}
    for mode in ("buffered", "planned"):
        with ModelWriter(tmp_path / mode, shard_size=2500) as w:
            if mode == "planned":
                w.plan([(n, t.dtype, t.shape) for n, t in tensors])
            for n, t in tensors:
                w.add(n, t)
                if mode == "planned":
                    assert not w._current  # nothing held in memory
            res = w.finish()
        files[mode] = {f: (tmp_path / mode / f).read_bytes() for f in res.shards}
    assert files["planned"] == files["buffered"] and len(files["planned"]) > 2
    out = load_state(tmp_path / "planned")
    assert all(torch.equal(out[n], t) for n, t in tensors)


def test_writer_planned_mode_refuses_surprises(tmp_path):
    with ModelWriter(tmp_path / "w", shard_size=1000) as w:
        w.plan([("a", torch.float32, (10,)), ("b", torch.float32, (10,))])
        with pytest.raises(ValueError, match="out of the planned order"):
            w.add("b", torch.zeros(10))
        with pytest.raises(ValueError, match="planned torch.float32"):
            w.add("a", torch.zeros(10, dtype=torch.float16))
        w.add("a", torch.zeros(10))
        with pytest.raises(RuntimeError, match="only 1 of the 2 planned"):
            w.finish()
    _no_leftovers(tmp_path, "w")


@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_streaming_merge_equals_sequential_general_path(family, monkeypatch, threads):
    """ties/task_arithmetic through the streaming kernel on worker threads == the general path."""
    from mergescope.merge.methods import gta_stream

    monkeypatch.setattr(gta_stream, "RELEASE_BYTES", 64)  # release calls on every chunk
    monkeypatch.setattr(gta_stream, "CHUNK", 64)

    for method in ("ties", "task_arithmetic"):
        (family / f"{method}.yml").write_text(
            f"merge_method: {method}\nbase_model: base\nmodels:\n  - model: ft1\n    parameters: {{weight: 0.7, density: 0.3}}\n"
            f"  - model: ft2\n    parameters: {{weight: [0.2, 1.0], density: 0.5}}\n  - model: lora\n"
            f"    parameters: {{weight: 0.4, density: 0.6}}\ndtype: float32\n"
        )
        run_merge(family / f"{method}.yml", family / f"fast-{method}-{threads}", threads=threads, shard_size="3KB")
        m = methods.get_method(method)
        monkeypatch.setitem(methods.REGISTRY, method, MergeMethod(**{**m.__dict__, "stream": None}))
        run_merge(family / f"{method}.yml", family / f"slow-{method}-{threads}", shard_size="3KB")
        monkeypatch.setitem(methods.REGISTRY, method, m)
        fast, slow = load_state(family / f"fast-{method}-{threads}"), load_state(family / f"slow-{method}-{threads}")
        assert fast.keys() == slow.keys() and all(torch.equal(fast[k], slow[k]) for k in fast)


def test_released_pages_read_back_the_same(tmp_path):
    """Streaming kernels drop mapped input pages as they go (release_range); reads stay correct."""
    from mergescope.io.checkpoint import open_checkpoint
    from tests.ckpt_utils import write_state

    t = torch.randn(3_000_001, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    write_state(tmp_path / "m", {"a.weight": torch.ones(7), "w": t}, tokenizer=False)
    ck = open_checkpoint(tmp_path / "m")
    x = ck.get("w")
    assert torch.equal(x, t)
    ck.release_range("w", 1000, 2_000_000)
    ck.release_range("w", 0, 3_000_001)
    assert torch.equal(x, t) and torch.equal(ck.get("a.weight"), torch.ones(7))
    ck.release("w")
    assert torch.equal(ck.get("w"), t)
    ck.close()


def test_model_card_records_analysis_findings(tmp_path, monkeypatch):
    """The card carries the merge-readiness findings: from the cache of an earlier `analyze` of the same
    paths, or computed with --analyze; without either it says how to get them."""
    from pathlib import Path

    from mergescope.tui.cli import main

    monkeypatch.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path / "cache"))
    fam = Path(__file__).resolve().parents[1] / "analysis" / "demo" / "family"
    monkeypatch.chdir(tmp_path)
    plan = tmp_path / "p.yml"
    plan.write_text(
        f"merge_method: task_arithmetic\nbase_model: {fam}/base\nmodels:\n"
        f"  - model: {fam}/code\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {fam}/overtrained\n    parameters: {{weight: 0.5}}\n"
    )
    assert main(["merge", str(plan), "a", "-q"]) == 0
    assert "No analysis was on record" in (tmp_path / "a" / "README.md").read_text()
    assert main(["analyze", f"{fam}/base", f"{fam}/code", f"{fam}/overtrained", "-q"]) == 0
    assert main(["merge", str(plan), "b", "-q"]) == 0
    card = (tmp_path / "b" / "README.md").read_text()
    assert "`drifted`" in card and f"{fam}/overtrained" in card
    monkeypatch.setenv("MERGESCOPE_CACHE_DIR", str(tmp_path / "cache2"))
    assert main(["merge", str(plan), "c", "-q", "--analyze"]) == 0
    assert "`drifted`" in (tmp_path / "c" / "README.md").read_text()
