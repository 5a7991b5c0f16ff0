"""Where a merge lost: models against their parents, text by text and passage by passage.

Aggregates hide failures: a merge can score well overall and fail on one kind of input. For every text,
each model is compared with each parent by the paired interval of the difference in bits per byte, and
the text's passages (blank-line paragraphs, or .jsonl records) are ranked by the bits the model lost
(or gained) there: the passage's difference in bits per byte times its bytes, so that a long passage
that got a little worse outranks a five-byte one that got much worse. The share of passages that got
worse by more than a threshold says whether a loss is broad or concentrated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mergescope.score.result import Score
from mergescope.score.stats import Interval, paired, verdict
from mergescope.score.texts import passages

THRESHOLD = 0.1  # bits per byte: a passage this much worse counts as regressed
TOP = 5
SNIPPET = 160


@dataclass
class Passage:
    index: int
    start: int
    end: int
    snippet: str
    bytes: int
    model_bpb: float
    parent_bpb: float

    @property
    def delta(self) -> float:
        """Bits per byte the model lost here (negative: gained)."""
        return self.model_bpb - self.parent_bpb

    @property
    def bits(self) -> float:
        return self.delta * self.bytes

    def to_dict(self) -> dict:
        return {
            "passage": self.index,
            "start": self.start,
            "end": self.end,
            "bytes": self.bytes,
            "model_bpb": self.model_bpb,
            "parent_bpb": self.parent_bpb,
            "delta_bpb": self.delta,
            "delta_bits": self.bits,
            "snippet": self.snippet,
        }


@dataclass
class Pair:
    text: str
    model: str
    parent: str
    model_score: Score
    parent_score: Score
    diff: Interval | None
    verdict: str
    passages: list[Passage] = field(default_factory=list)
    threshold: float = THRESHOLD

    @property
    def regressed(self) -> list[Passage]:
        return [p for p in self.passages if p.delta > self.threshold]

    @property
    def regressed_share(self) -> float:
        return len(self.regressed) / len(self.passages) if self.passages else 0.0

    def worst(self, n: int = TOP) -> list[Passage]:
        return sorted((p for p in self.passages if p.bits > 0), key=lambda p: -p.bits)[:n]

    def best(self, n: int = TOP) -> list[Passage]:
        return sorted((p for p in self.passages if p.bits < 0), key=lambda p: p.bits)[:n]

    def to_dict(self, top: int = TOP) -> dict:
        return {
            "text": self.text,
            "model": self.model,
            "parent": self.parent,
            "model_bpb": self.model_score.value,
            "parent_bpb": self.parent_score.value,
            "difference": self.diff.to_dict() if self.diff else None,
            "verdict": self.verdict,
            "passages": len(self.passages),
            "threshold_bpb": self.threshold,
            "regressed": len(self.regressed),
            "regressed_share": self.regressed_share,
            "lost_most": [p.to_dict() for p in self.worst(top)],
            "gained_most": [p.to_dict() for p in self.best(top)],
        }


def passage_scores(text: bytes, score: Score) -> list[tuple[int, int, float, float]]:
    """(start, end, bits, bytes) per passage of `text`, from the score's units (a passage holds the units
    that start inside it; units never straddle passages)."""
    import bisect

    spans = passages(text)
    starts = [a for a, _ in spans]
    bits = [0.0] * len(spans)
    nbytes = [0.0] * len(spans)
    for u0, num, den in zip(score.unit_starts, score.unit_num, score.unit_den):
        k = max(0, bisect.bisect_right(starts, u0) - 1)
        bits[k] += num
        nbytes[k] += den
    return [(a, b, bits[k], nbytes[k]) for k, (a, b) in enumerate(spans)]


def _snippet(text: bytes, a: int, b: int, n: int = SNIPPET) -> str:
    s = bytes(text[a:b]).decode("utf-8", errors="replace").strip()
    s = " ⏎ ".join(line.strip() for line in s.splitlines() if line.strip())
    return s if len(s) <= n else s[: n - 1] + "…"


def compare_pair(
    text_name: str, text: bytes | None, model: str, parent: str, a: Score, b: Score, threshold: float = THRESHOLD
) -> Pair:
    diff = paired(a, b)
    pair = Pair(text_name, model, parent, a, b, diff, verdict(diff, a.higher_is_better), threshold=threshold)
    if text is not None and a.unit_num and a.unit_starts == b.unit_starts:
        pa, pb = passage_scores(text, a), passage_scores(text, b)
        for k, ((s, e, bits_a, by_a), (_, _, bits_b, by_b)) in enumerate(zip(pa, pb)):
            if by_a > 0 and by_b > 0:
                pair.passages.append(Passage(k, s, e, _snippet(text, s, e), int(by_a), bits_a / by_a, bits_b / by_b))
    return pair


def compare(
    texts: Mapping[str, bytes],
    scores: Mapping[str, Mapping[str, Score]],
    models: Sequence[str],
    parents: Sequence[str],
    threshold: float = THRESHOLD,
) -> list[Pair]:
    """Every (text, model, parent) pair; `scores` is {label: {text: Score}} holding models and parents; a
    text given as None (a task) has no passages."""
    return [
        compare_pair(t, texts[t], m, p, scores[m][t], scores[p][t], threshold)
        for t in texts
        for m in models
        for p in parents
        if m != p
    ]
