"""Hugging Face repo ids (`org/name@revision`) as models: resolved from a local cache the test builds
(offline), downloaded from a loopback hub the test starts (`HF_ENDPOINT`), and checked on their configs
and safetensors headers before anything big is downloaded. The CLI runs as a subprocess."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from mergescope.demo import family_dir, heldout_dir
from mergescope.io.hub_check import Header, compare, wanted_files
from mergescope.io.hub_ref import HubRef, parse
from tests.hub_server import FakeHub, build_cache

pytest.importorskip("huggingface_hub", reason="the hub extra is not installed: pip install -e '.[hub]'")

FAMILY = family_dir()


def hub_env(tmp_path, endpoint="http://127.0.0.1:9", offline=False):
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("HF_", "HUGGING", "HTTP_PROXY", "HTTPS_PROXY"))
    }
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_ENDPOINT=endpoint,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        COLUMNS="120",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def cli(env, *args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mergescope.tui.cli", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


# ------------------------------------------------------------------------------------ references
def test_repo_ids_are_recognised_only_where_no_local_path_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse("meta-llama/Meta-Llama-3-8B") == HubRef("meta-llama/Meta-Llama-3-8B", None)
    assert parse("org/model@v1.0") == HubRef("org/model", "v1.0")
    for local_like in ("code", "./a/b", "/abs/path", "dir/model.safetensors", "a/b/c", "~/x/y", "base+adapter"):
        assert parse(local_like) is None, local_like
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert parse("org/model") is None  # an existing folder stays a path


def test_only_the_files_a_model_needs_are_fetched():
    names = [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "original/consolidated.00.pth",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        ".gitattributes",
        "LICENSE",
    ]
    assert wanted_files(names) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert wanted_files(["config.json", "pytorch_model.bin", "flax_model.msgpack"]) == [
        "config.json",
        "pytorch_model.bin",
    ]


def test_headers_alone_tell_architecture_shape_and_vocabulary_apart():
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 100}
    t = {
        "model.embed_tokens.weight": (100, 8),
        "model.layers.0.mlp.up_proj.weight": (16, 8),
        "lm_head.weight": (100, 8),
    }
    base = Header("org/base", cfg, t)
    assert compare(base, Header("org/ft", cfg, dict(t))) == ([], [])
    errors, _ = compare(base, Header("org/gpt", {**cfg, "model_type": "gpt2"}, t))
    assert errors == ["org/gpt: architecture 'gpt2', the base org/base is 'llama'"]
    wide = {**t, "model.layers.0.mlp.up_proj.weight": (32, 8)}
    errors, _ = compare(base, Header("org/wide", cfg, wide))
    assert "org/wide: 1 tensors differ in shape" in errors[0] and "[32, 8] vs [16, 8]" in errors[0]
    errors, _ = compare(base, Header("org/cut", cfg, {k: v for k, v in t.items() if "mlp" not in k}))
    assert errors == ["org/cut: 1 of the base's tensors are absent, e.g. model.layers.0.mlp.up_proj.weight"]
    chat = {**t, "model.embed_tokens.weight": (104, 8), "lm_head.weight": (104, 8)}
    errors, warnings = compare(base, Header("org/chat", {**cfg, "vocab_size": 104}, chat))
    assert errors == [] and "a vocabulary of 104 tokens, the base org/base 100" in warnings[0]
    assert "tokenizer_source: union" in warnings[0]


# ------------------------------------------------------------------------------------ the local cache
@pytest.fixture
def cached(tmp_path):
    """A Hugging Face cache holding the demo base, code (also at tag v1) and prose."""
    cache = tmp_path / "hub"
    build_cache(cache, "demo/base", FAMILY / "base")
    build_cache(cache, "demo/code", FAMILY / "code", revisions=("main", "v1"))
    build_cache(cache, "demo/prose", FAMILY / "prose")
    return hub_env(tmp_path, offline=True)


def test_analyze_resolves_repo_ids_from_the_cache_offline(cached, tmp_path):
    out = tmp_path / "r.json"
    res = cli(cached, "analyze", "demo/base", "demo/code@v1", "demo/prose", "--json", out)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["base"] == "demo/base" and data["models"] == ["demo/code@v1", "demo/prose"]
    assert "next: mergescope ui demo/base demo/code@v1 demo/prose" in res.stdout
    assert not [f for f in data["findings"] if f["code"] == "declared-base-differs"]


def test_plans_eval_and_ui_take_repo_ids_from_the_cache(cached, tmp_path):
    plan = tmp_path / "plan.yml"
    plan.write_text(
        "merge_method: task_arithmetic\nbase_model: demo/base\nmodels:\n"
        "  - model: demo/code\n    parameters: {weight: 0.5}\n  - model: demo/prose\n    parameters: {weight: 0.5}\n"
    )
    res = cli(cached, "merge", plan, tmp_path / "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    res = cli(cached, "eval", "demo/code", "--text", heldout_dir() / "code.txt", "--max-bytes", "800")
    assert res.returncode == 0, res.stderr
    assert re.search(r"code\s*│\s*\d\.\d{4} ±", res.stdout), res.stdout
    res = cli(cached, "ui", "demo/base", "demo/missing")  # refused before the app starts
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "demo/missing" in res.stderr and "HF_HUB_OFFLINE" in res.stderr


# ------------------------------------------------------------------------------------ downloads
@pytest.fixture
def repos(tmp_path):
    """Repo folders for the loopback hub: base, code (plus a file of another format that must never be
    fetched), prose, and `wide`, whose MLP matrix of layer 0 is larger than the base's."""
    root = tmp_path / "repos"
    for name in ("base", "code", "prose"):
        shutil.copytree(FAMILY / name, root / name)
    (root / "code" / "original").mkdir()
    (root / "code" / "original" / "consolidated.00.pth").write_bytes(b"\0" * 200_000)
    shutil.copytree(FAMILY / "code", root / "wide")
    sd = load_file(str(root / "wide" / "model.safetensors"))
    name = next(n for n in sd if "layers.0.mlp" in n and sd[n].ndim == 2)
    sd[name] = sd[name].new_zeros((sd[name].shape[0] + 8, sd[name].shape[1]))
    save_file(sd, str(root / "wide" / "model.safetensors"))
    return {f"demo/{n}": root / n for n in ("base", "code", "prose", "wide")}


def _full_weight_gets(hub):
    return [(i, p) for i, (m, p, rng) in enumerate(hub.log) if m == "GET" and p.endswith(".safetensors") and not rng]


def test_download_reads_headers_first_then_fetches_only_what_a_model_needs(repos, tmp_path):
    with FakeHub(repos, tags={"demo/prose": {"v1": "main"}}) as hub:
        env = hub_env(tmp_path, hub.url)
        res = cli(env, "analyze", "demo/base", "demo/code", "demo/prose@v1")
        log = list(hub.log)
    assert res.returncode == 0, res.stderr
    assert "downloading demo/code (" in res.stderr and "downloading demo/prose@v1 (" in res.stderr
    header_reads = [i for i, (m, p, rng) in enumerate(log) if p.endswith(".safetensors") and rng]
    full = _full_weight_gets(hub)
    assert len(header_reads) >= 3 and len(full) == 3
    assert max(header_reads) < min(i for i, _ in full)  # every header was read before any weights
    assert not [p for _, p, _ in log if "original/" in p and "/resolve/" in p]
    snap = tmp_path / "hub" / "models--demo--code" / "snapshots" / hub.sha["demo/code"]
    assert (snap / "model.safetensors").is_file() and (snap / "tokenizer.json").is_file()
    assert not (snap / "original").exists()
    # the same command offline, the hub gone: all from the cache
    res = cli(hub_env(tmp_path, offline=True), "analyze", "demo/base", "demo/code", "demo/prose@v1")
    assert res.returncode == 0, res.stderr
    assert "downloading" not in res.stderr


def test_a_model_of_another_shape_is_refused_before_any_download(repos, tmp_path):
    with FakeHub(repos) as hub:
        res = cli(hub_env(tmp_path, hub.url), "analyze", "demo/base", "demo/code", "demo/wide")
        full = _full_weight_gets(hub)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "demo/wide: 1 tensors differ in shape" in err[0] and "nothing was downloaded" in err[0]
    assert full == []
    assert not list((tmp_path / "hub").rglob("model.safetensors"))


def test_unknown_repos_and_revisions_say_so(repos, tmp_path):
    with FakeHub(repos) as hub:
        env = hub_env(tmp_path, hub.url)
        missing = cli(env, "analyze", "demo/base", "demo/nope")
        bad_rev = cli(env, "analyze", "demo/base", "demo/code@nope")
    assert missing.returncode == 2 and bad_rev.returncode == 2
    assert "demo/nope: no such file or directory, and no model of that name on the Hugging Face Hub" in missing.stderr
    assert "demo/code@nope: no such revision on the Hugging Face Hub" in bad_rev.stderr
    assert "Traceback" not in missing.stderr + bad_rev.stderr


def test_a_plan_with_repo_ids_downloads_them_then_merges(repos, tmp_path):
    plan = tmp_path / "plan.yml"
    plan.write_text(
        "merge_method: ties\nbase_model: demo/base\nmodels:\n"
        "  - model: demo/code\n    parameters: {weight: 1.0, density: 0.5}\n"
        "  - model: demo/prose\n    parameters: {weight: 1.0, density: 0.5}\n"
    )
    with FakeHub(repos) as hub:
        res = cli(hub_env(tmp_path, hub.url), "merge", plan, tmp_path / "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert Path(tmp_path / "hub" / "models--demo--base" / "refs" / "main").read_text() == hub.sha["demo/base"]
