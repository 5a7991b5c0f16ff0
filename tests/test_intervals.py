"""Scores carry their uncertainty: per-unit losses, bootstrap intervals, paired differences, splits."""

import json
import random

import numpy as np
import pytest

from mergescope.demo import family_dir, heldout_dir
from mergescope.io.errors import InputError
from mergescope.score.candidate import MEAN, Objective, Scorer
from mergescope.score.result import Score
from mergescope.score.stats import interval, paired, reduced, reduced_diff, verdict
from mergescope.score.texts import Text, passages, read_text, split_point, split_texts, units

FAM = family_dir()
CODE = (heldout_dir() / "code.txt").read_bytes()


@pytest.fixture(scope="module")
def scored():
    """code, code_b and code again under another name, on the held-out code (per-unit losses kept)."""
    text = {"code": Text(CODE)}
    rows = Scorer(text).models([str(FAM / "code"), str(FAM / "code_b"), str(FAM / "code") + "/"])
    return rows


def test_units_tile_the_text_and_sum_to_the_score(scored):
    s = scored[str(FAM / "code")]["code"]
    us = units(CODE)
    assert us[0][0] == 0 and us[-1][1] == len(CODE)
    assert all(a[1] == b[0] for a, b in zip(us, us[1:]))
    assert s.unit_starts == tuple(a for a, _ in us)
    assert sum(s.unit_num) / sum(s.unit_den) == pytest.approx(s.value, rel=1e-12)
    assert sum(s.unit_den) == s.n_bytes == len(CODE) - 1  # byte-level: every byte after the first predicted
    assert max(b - a for a, b in us) <= 2048 + 1024  # long paragraphs are cut into pieces


def test_interval_is_seeded_and_brackets_the_value(scored):
    s = scored[str(FAM / "code")]["code"]
    a, b = interval(s), interval(s)
    assert a == b and a.lo < s.value < a.hi and 0.005 < a.half < 0.5
    d = s.to_dict(units=True)
    assert d["interval95"] == [a.lo, a.hi] and len(d["units"]) == len(s.unit_num)
    json.dumps(d)


def test_one_model_under_two_names_never_differs(scored):
    """The same model scored twice: every unit agrees, so no split of the text calls them different."""
    a, b = scored[str(FAM / "code")]["code"], scored[str(FAM / "code") + "/"]["code"]
    assert a.unit_num == b.unit_num
    rng = random.Random(0)
    n = len(a.unit_num)
    false = 0
    for _ in range(200):
        keep = sorted(rng.sample(range(n), n // 2))
        sa, sb = _subset(a, keep), _subset(b, keep)
        d = paired(sa, sb)
        false += d.excludes_zero
    assert false == 0


@pytest.mark.parametrize("n", [20, 60])
def test_false_difference_rate_is_nominal_when_two_models_are_equally_good(n):
    """Two models whose per-unit losses come from one distribution (no real difference): the paired 95 %
    interval excludes 0 in about 5 % of texts, not far more (overconfident) nor near 0 % (useless), also
    with the few passages of a report split."""
    rng = np.random.default_rng(1)
    false, trials = 0, 400
    for t in range(trials):
        den = rng.integers(80, 400, n).astype(float)
        shared = rng.gamma(4.0, 0.5, n)  # how hard each passage is, for both models
        num_a = (shared + rng.normal(0, 0.3, n)).clip(0.05) * den
        num_b = (shared + rng.normal(0, 0.3, n)).clip(0.05) * den
        starts = tuple(range(n))
        a = Score(num_a.sum() / den.sum(), False, 1.0, n, int(den.sum()), None, tuple(num_a), tuple(den), starts)
        b = Score(num_b.sum() / den.sum(), False, 1.0, n, int(den.sum()), None, tuple(num_b), tuple(den), starts)
        false += paired(a, b, seed=t, n_boot=1000).excludes_zero
    rate = false / trials
    assert 0.02 <= rate <= 0.075, rate


def test_a_real_difference_is_found_and_named(scored):
    a, b = scored[str(FAM / "code")]["code"], scored[str(FAM / "code_b")]["code"]
    d = paired(a, b)
    assert d.value == pytest.approx(a.value - b.value)
    assert d.lo <= d.value <= d.hi
    assert verdict(d) in ("better", "worse", "within noise")
    # pairing removes what the passages share: the paired interval is narrower than either score's own
    assert d.half < interval(a).half


def test_objective_intervals_and_negative_weights(scored):
    a = scored[str(FAM / "code")]
    row = {"x": a["code"], "y": a["code"]}
    iv = reduced(row, MEAN.reducer(row))
    assert iv.value == pytest.approx(a["code"].value)
    worse = Objective.parse("weights:x=1,y=-1")
    assert worse.value(row) == pytest.approx(0.0)
    assert reduced_diff(row, row, worse.reducer(row)).half == 0.0
    with pytest.raises(InputError, match="negative weight"):
        Objective.parse("weights:x=0")


def test_passages_splits_and_jsonl(tmp_path):
    text = b"first para\nline\n\nsecond\n\n\nthird one\n"
    assert [text[a:b] for a, b in passages(text)] == [b"first para\nline", b"second", b"third one\n"]
    big = b"".join(b"para %d\n" % i + b"x" * 90 + b"\n\n" for i in range(40))
    cut = split_point(big)
    assert big[cut - 2 : cut] == b"\n\n" and 0.65 * len(big) < cut < 0.85 * len(big)
    sel, rep = split_texts({"t": Text(big)})
    assert bytes(sel["t"]) + bytes(rep["t"]) == big
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"text": "one\n\nwith a blank line"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    t = read_text(f)
    assert bytes(t) == b"one\n\nwith a blank line\n\ntwo" and passages(t) == [(0, 22), (24, 27)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 3}\n')
    with pytest.raises(InputError, match="line 1 is not a JSON object with a string `text`"):
        read_text(bad)
    with pytest.raises(InputError, match="--max-bytes -5: must be a positive"):
        read_text(f, max_bytes=-5)


@pytest.mark.parametrize("bos", [False, True])
def test_bpe_token_losses_land_in_the_right_passage(tmp_path, bos):
    from tests.ckpt_utils import make_llama, write_bpe_tokenizer

    raw = "αβγ first passage, with words\n\nsecond one here — ünïcode\n"
    vocab = write_bpe_tokenizer(tmp_path, raw * 3, bos)
    d = make_llama(tmp_path / "m", vocab=vocab)
    write_bpe_tokenizer(d, raw * 3, bos)
    s = Scorer({"t": Text(raw.encode())}).model(str(d))["t"]
    assert len(s.unit_num) == 2 and all(x > 0 for x in s.unit_den)
    first = _first_token_bytes(d, raw)
    assert (first == 0) == bos
    assert sum(s.unit_den) == s.n_bytes == len(raw.encode()) - first
    assert sum(s.unit_num) / sum(s.unit_den) == pytest.approx(s.value, rel=1e-12)


def _first_token_bytes(d, raw: str) -> int:
    from mergescope.score.tokens import tokenizer_for

    return tokenizer_for(d, {}, "m").encode(raw.encode()).unscored_bytes


def _subset(s: Score, keep) -> Score:
    return Score(
        s.value,
        s.higher_is_better,
        s.nll_nats,
        s.tokens,
        s.n_bytes,
        None,
        tuple(s.unit_num[i] for i in keep),
        tuple(s.unit_den[i] for i in keep),
        tuple(s.unit_starts[i] for i in keep),
    )
