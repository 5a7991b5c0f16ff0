"""Scores from lm-evaluation-harness tasks (the `lm-eval` extra): accuracy on benchmarks people trust.

`load_tasks` reads task names (hellaswag, a group such as mmlu) or TASK.yaml files once, with the
harness's TaskManager, and fixes which samples (documents) are scored. `task_scores` hands every model
to the harness as a model object: a transformers model built from the checkpoint or from tensors in
memory (a merge: nothing is written), wrapped in its HFLM. Each task (a group: its tasks pooled, the
size-weighted mean the harness reports) becomes one Score: the metric (the task's first, or `metric`),
the harness's standard error, and the per-sample values as the score's units (one sample each), so
that two models on the same samples are compared sample by sample (stats.paired).

Splits: a search chooses on one part of each task's samples and reports on the rest. The samples are
ordered by a hash of (task, document index), fixed and independent of the dataset's own order, and the
first `fraction` of that order reports; `limit` keeps the first N of that order.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mergescope.io.errors import InputError
from mergescope.io.extras import install_hint
from mergescope.io.progress import Cancelled, Progress, ShouldStop
from mergescope.score.llama import Unsupported
from mergescope.score.model import Model, open_model
from mergescope.score.result import Score

FEWSHOT_SEED = 1234  # the harness's default seed for choosing few-shot examples
BOOTSTRAP = 1000  # the harness's bootstrap draws for the standard error of metrics without a formula
_SHIFT = 32  # a pooled sample's unit id: (task index << _SHIFT) | document index


def _order(task: str, ids: Sequence[int]) -> list[int]:
    """The document indices in their fixed hashed order."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{task}:{i}".encode()).digest())


@dataclass
class Tasks:
    """What is scored: per requested task (its name in the table), the harness tasks it holds and the
    documents of each that are scored."""

    parts: dict[str, tuple[str, ...]]  # name -> the harness's (leaf) task names
    docs: dict[str, tuple[int, ...]]  # leaf task -> document indices scored (sorted)
    metric: dict[str, str]  # leaf task -> the metric that is the score
    num_fewshot: int | None = None
    higher_is_better: bool = True
    loaded: dict = field(default_factory=dict, repr=False, compare=False)  # leaf -> the harness's Task

    @property
    def names(self) -> list[str]:
        return list(self.parts)

    def samples(self, name: str) -> int:
        return sum(len(self.docs[leaf]) for leaf in self.parts[name])

    def _keep(self, pick) -> Tasks:
        return replace(self, docs={leaf: tuple(sorted(pick(leaf, ids))) for leaf, ids in self.docs.items()})

    def split(self, fraction: float) -> tuple[Tasks, Tasks]:
        """(selection, report): the first `fraction` of each task's samples in the hashed order report."""
        for leaf, ids in self.docs.items():
            if len(ids) < 2:
                raise InputError(f"--task {leaf}: {len(ids)} sample, too few to split into selection and report")

        def cut(ids):
            return max(1, min(len(ids) - 1, round(len(ids) * fraction)))

        rep = self._keep(lambda leaf, ids: _order(leaf, ids)[: cut(ids)])
        sel = self._keep(lambda leaf, ids: _order(leaf, ids)[cut(ids) :])
        return sel, rep

    def first(self, fraction: float, minimum: int = 32) -> Tasks | None:
        """The first `fraction` of each task's samples (at least `minimum`), or None when that is all."""
        n = {leaf: min(len(ids), max(minimum, math.ceil(len(ids) * fraction))) for leaf, ids in self.docs.items()}
        if all(n[leaf] >= len(ids) for leaf, ids in self.docs.items()):
            return None
        return self._keep(lambda leaf, ids: _order(leaf, ids)[: n[leaf]])

    def describe(self) -> dict:
        """What the scores depend on (a study's identity): tasks, metrics, shots and the samples."""
        docs = hashlib.sha256(repr(sorted(self.docs.items())).encode()).hexdigest()[:16]
        return {"tasks": self.parts, "metric": self.metric, "num_fewshot": self.num_fewshot, "samples": docs}

    def summary(self) -> str:
        shots = f"{self.num_fewshot}-shot" if self.num_fewshot is not None else "the tasks' own shots"
        each = ", ".join(
            f"{n} ({'/'.join(sorted({self.metric[leaf] for leaf in self.parts[n]}))}, {self.samples(n)} samples)"
            for n in self.parts
        )
        return f"lm-evaluation-harness tasks, {shots}: {each}"


# ---------------------------------------------------------------------------------------------- loading
def _harness():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"--task: needs lm-evaluation-harness with its transformers support ({exc.name}): {install_hint('lm-eval')}"
        ) from None


@contextlib.contextmanager
def _quiet():
    """The harness's and transformers' logging and progress bars held back (their bars write to stderr,
    where the CLI draws its own); what they wrote is kept for an error message."""
    names = ("lm_eval", "lm-eval", "datasets", "transformers")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def load_tasks(
    specs: Sequence[str], metric: str | None = None, num_fewshot: int | None = None, limit: int | None = None
) -> Tasks:
    """The tasks named (or given as YAML files), their datasets loaded, and the samples to score."""
    _harness()
    from lm_eval.tasks import TaskManager

    if num_fewshot is not None and num_fewshot < 0:
        raise InputError(f"--num-fewshot {num_fewshot}: must be 0 or more")
    if limit is not None and limit < 1:
        raise InputError(f"--task-limit {limit}: must be at least 1 sample")
    files = [s for s in specs if s.endswith((".yaml", ".yml"))]
    for f in files:
        if not Path(f).is_file():
            raise InputError(f"--task {f}: no such file; give a task's YAML file or a task name")
    parts: dict[str, tuple[str, ...]] = {}
    loaded: dict = {}
    with _quiet():
        manager = TaskManager(include_defaults=len(files) < len(specs))
        for spec in specs:
            try:
                got = manager.load([str(Path(spec).resolve()) if spec in files else spec])["tasks"]
            except Exception as exc:  # the harness's and datasets' own errors, of any kind
                if spec not in files and isinstance(exc, KeyError):
                    raise InputError(
                        f"--task {spec}: not a task lm-evaluation-harness knows (`lm-eval ls tasks` lists them) "
                        "nor a YAML file"
                    ) from None
                raise InputError(f"--task {spec}: lm-evaluation-harness cannot load it ({_first_line(exc)})") from None
            name = Path(spec).stem if spec in files else spec
            parts[name] = tuple(sorted(got))
            loaded.update(got)
    metrics, hib = {}, set()
    for leaf, task in loaded.items():
        known = list(task.aggregation())
        if not known or (metric is not None and metric not in known):
            raise InputError(f"--task-metric {metric}: task {leaf} reports {', '.join(known) or 'no metric'}")
        metrics[leaf] = metric or known[0]
        hib.add(bool(task.higher_is_better().get(metrics[leaf], True)))
    if len(hib) > 1:
        raise InputError("--task: these tasks' metrics disagree on whether higher is better; score them apart")
    docs = {}
    for leaf, task in loaded.items():
        ids = range(len(task.eval_docs))
        docs[leaf] = tuple(sorted(_order(leaf, ids)[:limit] if limit else ids))
        if not docs[leaf]:
            raise InputError(f"--task {leaf}: has no samples to score")
    return Tasks(parts, docs, metrics, num_fewshot, hib.pop(), loaded)


# ---------------------------------------------------------------------------------------------- the model
def hf_tokenizer(model: Model):
    """The model's tokenizer as transformers', with a prefix token for empty contexts: (tokenizer, id)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    d = model.tokenizer_dir
    if d is not None and (d / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(d))
    elif d is not None and (d / "tokenizer.json").is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"))
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=_bytes_tokenizer())
    for attr, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")):
        if getattr(tok, attr) is None and isinstance(model.config.get(key), int):
            setattr(tok, attr, tok.convert_ids_to_tokens(model.config[key]))
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if prefix is None and len(tok) == 256:
        prefix = ord("\n")  # a byte-level model without special tokens: a line break starts a text
    if prefix is None:
        raise InputError(
            f"{model.label}: its tokenizer has no BOS or EOS token, which lm-evaluation-harness puts before an "
            "empty context; set bos_token_id in its config.json"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.convert_ids_to_tokens(prefix)
    return tok, prefix


def _bytes_tokenizer():
    """The 256 bytes as tokens (a byte-level model with no tokenizer files), as a `tokenizers` object."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from mergescope.score.tokens import bytes_to_unicode

    b2u = bytes_to_unicode()
    tok = Tokenizer(models.BPE({b2u[b]: b for b in range(256)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _lm(model: Model, device: str, should_stop: ShouldStop | None):
    """The harness's HFLM around the model built by transformers (its progress bars off, `should_stop`
    polled before every batch)."""
    from lm_eval.models.huggingface import HFLM

    from mergescope.score.transformers_backend import load_causal_lm

    class Wrapped(HFLM):
        def _model_call(self, *args, **kwargs):
            if should_stop is not None and should_stop():
                raise Cancelled()
            return super()._model_call(*args, **kwargs)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    try:
        hf = load_causal_lm(model, device)
    except Unsupported as exc:
        raise InputError(f"{model.label}: lm-evaluation-harness scores through transformers, and {exc}") from None
    tok, prefix = hf_tokenizer(model)
    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    vocab = int(getattr(cfg, "vocab_size", 0) or len(tok))
    batch = max(1, min(16, (1 << 28) // (4 * 256 * max(vocab, 1))))  # a batch's logits near 256 MB at 256 tokens
    return Wrapped(pretrained=hf, tokenizer=tok, batch_size=batch, prefix_token_id=prefix)


# ---------------------------------------------------------------------------------------------- scoring
def _stderr(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _evaluate(lm, tasks: Tasks) -> dict:
    from lm_eval.evaluator import evaluate

    leaves = {leaf: tasks.loaded[leaf] for name in tasks.parts for leaf in tasks.parts[name]}
    for task in leaves.values():
        if tasks.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=tasks.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
    samples = {leaf: list(tasks.docs[leaf]) for leaf in leaves}
    return evaluate(
        lm=lm,
        task_dict={"tasks": leaves, "groups": {}, "group_map": {}},
        samples=samples,
        log_samples=True,
        bootstrap_iters=BOOTSTRAP,
    )


def _score(tasks: Tasks, name: str, out: dict) -> Score:
    """One task's Score (a group: its tasks pooled) from the harness's results and logged samples."""
    nums, starts, values, sizes, errs = [], [], [], [], []
    per_sample = True
    for k, leaf in enumerate(tasks.parts[name]):
        metric, res = tasks.metric[leaf], out["results"][leaf]
        keys = [key for key in res if key.split(",")[0] == metric and "_stderr" not in key]
        if not keys:
            raise InputError(f"--task {leaf}: lm-evaluation-harness reported no {metric} ({', '.join(res)})")
        key = keys[0]
        filt = key.split(",", 1)[1] if "," in key else "none"
        logged = sorted((s for s in out["samples"][leaf] if s.get("filter", filt) == filt), key=lambda s: s["doc_id"])
        vals = [s.get(metric) for s in logged]
        mean_like = getattr(tasks.loaded[leaf].aggregation().get(metric), "__name__", "") == "mean"
        if mean_like and vals and all(isinstance(v, (int, float, bool)) for v in vals):
            nums += [float(v) for v in vals]
            starts += [(k << _SHIFT) | int(s["doc_id"]) for s in logged]
        else:
            per_sample = False
        values.append(float(res[key]))
        sizes.append(len(logged) or len(tasks.docs[leaf]))
        errs.append(_stderr(res.get(f"{metric}_stderr,{filt}")))
    total = sum(sizes)
    value = sum(v * n for v, n in zip(values, sizes)) / total
    stderr = None
    if all(e is not None for e in errs):
        stderr = math.sqrt(sum((e * n / total) ** 2 for e, n in zip(errs, sizes)))
    if not per_sample:
        return Score(value, tasks.higher_is_better, stderr=stderr)
    return Score(
        value,
        tasks.higher_is_better,
        unit_num=tuple(nums),
        unit_den=(1.0,) * len(nums),
        unit_starts=tuple(starts),
        stderr=stderr,
    )


def task_scores(
    models: Sequence[Model | str],
    tasks: Tasks,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, dict[str, Score]]:
    """{model: {task: Score}}; progress in samples, after each model."""
    _harness()
    from mergescope.io.device import resolve_device

    device = resolve_device(device)
    per_model = sum(tasks.samples(n) for n in tasks.parts)
    out: dict[str, dict[str, Score]] = {}
    for i, src in enumerate(models):
        m = src if isinstance(src, Model) else open_model(src)
        if progress is not None:
            progress(i * per_model, len(models) * per_model, m.label)
        try:
            with _quiet() as said:
                lm = _lm(m, device, should_stop)
                try:
                    res = _evaluate(lm, tasks)
                except (Cancelled, InputError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # the harness's own errors, from any task or model
                    tail = (said.getvalue().strip().splitlines() or [""])[-1][:160]
                    raise InputError(
                        f"--task on {m.label}: lm-evaluation-harness failed ({_first_line(exc)}{'; ' + tail if tail else ''})"
                    ) from None
            out[m.label] = {name: _score(tasks, name, res) for name in tasks.parts}
        finally:
            if not isinstance(src, Model):
                m.close()
        if progress is not None:
            progress((i + 1) * per_model, len(models) * per_model, m.label)
    return out
