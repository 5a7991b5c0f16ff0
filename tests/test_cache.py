"""The analysis cache: a hit is exactly the computed report; a damaged entry is ignored and rebuilt."""

import json
import os
import subprocess
import sys

import pytest

from mergescope.io import cache
from mergescope.stats.readiness import analyze


def _entries():
    return sorted(cache.cache_dir().glob("*.json"))


def test_hit_equals_the_computed_report(small_family):
    base, models = small_family
    first = analyze(base, models)
    again = analyze(base, models)
    assert not first.structure["from_cache"] and again.structure["from_cache"]
    a, b = first.to_json(), again.to_json()
    for d in (a, b):
        d["structure"].pop("from_cache")
    assert a == b


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "not json at all",
        lambda text: json.dumps([1, 2, 3]),  # JSON, not an entry
        lambda text: json.dumps({**json.loads(text), "key": "0" * 32}),  # another key's entry
        lambda text: json.dumps({**json.loads(text), "data": {"base": "x"}}),  # not a report
        lambda text: json.dumps({**json.loads(text), "data": {**json.loads(text)["data"], "sites": [{"layer": 1}]}}),
    ],
)
def test_damaged_entry_is_rebuilt(small_family, damage):
    base, models = small_family
    good = analyze(base, models[:2])
    (path,) = _entries()
    path.write_text(damage(path.read_text()))
    rebuilt = analyze(base, models[:2])
    assert not rebuilt.structure["from_cache"]
    assert rebuilt.whole().norm(0) == good.whole().norm(0)
    assert analyze(base, models[:2]).structure["from_cache"]  # the rebuilt entry is valid again


def test_two_analyses_at_once_leave_a_valid_cache(small_family):
    base, models = small_family
    code = "import sys; from mergescope.stats.readiness import analyze; analyze(sys.argv[1], sys.argv[2:])"
    procs = [subprocess.Popen([sys.executable, "-c", code, base, *models], env=dict(os.environ)) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert len(_entries()) == 1 and not list(cache.cache_dir().glob(".tmp-*"))
    assert analyze(base, models).structure["from_cache"]
