"""Cost of one in-memory candidate (a plan merged in memory, then scored): what a soup step, a sweep
point or a tuning trial costs.

    python3 tests/benchmarks/bench_candidate.py [--sets demo,100m] [--bytes 16000] [--context 512]

For each set, a task-arithmetic plan of two fine-tunes is merged in memory and scored on held-out text,
in a child process under `/usr/bin/time -v` (peak RSS), `--repeat` times (median). The 100m set is the
synthetic ~100M-parameter Llama shape of synth.py (generated under bench_data/ when missing, with the
demo's byte-level tokenizer.json copied in so it can be scored).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.synth import generate  # noqa: E402

CHILD = r"""
import json, sys, time
import torch  # not timed: a loop pays it once
from mergescope.merge.run import merge_in_memory
from mergescope.score.backends import score_models
from mergescope.score.model import Model
from mergescope.merge.plan import Plan
plan = Plan.load(sys.argv[1]); texts = {"text": open(sys.argv[2], "rb").read()[: int(sys.argv[3])]}
t0 = time.perf_counter(); m = merge_in_memory(plan); t1 = time.perf_counter()
s = score_models([Model("candidate", m.tensors, m.config, m.tokenizer_dir)], texts, context=int(sys.argv[4]))
t2 = time.perf_counter()
nbytes = sum(t.numel() * t.element_size() for t in m.tensors.values())
print(json.dumps({"merge_s": t1 - t0, "score_s": t2 - t1, "bpb": s["candidate"]["text"].value,
                  "merged_bytes": nbytes, "params": sum(t.numel() for t in m.tensors.values())}))
"""


def sets(names: list[str]) -> dict[str, tuple[Path, list[Path]]]:
    from mergescope.demo import family_dir

    out = {}
    for name in names:
        if name == "demo":
            fam = family_dir()
            out[name] = (fam / "base", [fam / "code", fam / "prose"])
        else:
            root = REPO / "bench_data" / name
            paths = generate(root, size=name, finetunes=2)
            for p in paths:
                if not (p / "tokenizer.json").is_file():
                    shutil.copyfile(family_dir() / "base" / "tokenizer.json", p / "tokenizer.json")
            out[name] = (paths[0], paths[1:])
    return out


def run(plan: Path, text: Path, nbytes: int, context: int) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, str(plan), str(text), str(nbytes), str(context)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    data = json.loads(res.stdout.strip().splitlines()[-1])
    data["peak_rss"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) * 1024
    data["wall_s"] = float(
        sum(
            x * 60**i
            for i, x in enumerate(
                reversed(
                    [
                        float(v)
                        for v in re.search(r"Elapsed \(wall clock\) time.*: ([\d:.]+)", res.stderr).group(1).split(":")
                    ]
                )
            )
        )
    )
    return data


def main(argv=None) -> int:
    from mergescope.demo import heldout_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="demo,100m")
    ap.add_argument("--bytes", type=int, default=16000, help="bytes of held-out text scored")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    text = heldout_dir() / "code.txt"
    work = REPO / "bench_data" / "_candidate"
    work.mkdir(parents=True, exist_ok=True)
    for name, (base, models) in sets(a.sets.split(",")).items():
        plan = work / f"{name}.yml"
        plan.write_text(
            "merge_method: task_arithmetic\n"
            f"base_model: {base}\nmodels:\n"
            + "".join(f"  - model: {m}\n    parameters: {{weight: 0.7}}\n" for m in models)
            + "dtype: float32\nout_dtype: bfloat16\n"
        )
        runs = [run(plan, text, a.bytes, a.context) for _ in range(a.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("merge_s", "score_s", "wall_s", "peak_rss")}
        base_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
        print(
            f"{name}: {runs[0]['params'] / 1e6:.1f}M params, candidate = merge {med['merge_s']:.2f} s + score "
            f"{med['score_s']:.2f} s ({a.bytes} bytes, context {a.context}); process wall {med['wall_s']:.1f} s, "
            f"peak RSS {med['peak_rss'] / 1e9:.2f} GB (base file {base_bytes / 1e9:.2f} GB, merged copy "
            f"{runs[0]['merged_bytes'] / 1e9:.2f} GB); bits per byte {runs[0]['bpb']:.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
