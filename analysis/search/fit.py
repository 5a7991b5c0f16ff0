"""`fit`: learn the plan editor's ratio table by gradient descent on held-out text.

The merged weights are a smooth function of the table (linear_form.py), and bits per byte is a smooth
function of the weights (score/loss.py), so the table's cells are fitted with Adam on the selection
split instead of searched blindly. Granularity: `layer` (a cell per model × layer × group), `band`
(3 bands of layers), `group` (one band), `model` (one weight per model, every cell of a model tied).
The last `HELD` of each selection text is held out for early stopping (the best step on it is kept);
each step clamps the cells into their ranges (a cell whose task vector barely moves the loss, such as
a norm, would otherwise drift as far as Adam's step allows). The starting point is the plan itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mergescope.io.errors import InputError
from mergescope.io.progress import Cancelled, Progress, ShouldStop
from mergescope.merge.plan.ratio_table import key_in_force
from mergescope.score.candidate import MEAN, Objective
from mergescope.score.loss import Leaves, accumulate, bits_per_byte, text_windows
from mergescope.score.texts import split_texts

GRANULARITIES = {"layer": 0, "band": 3, "group": 1, "model": 1}  # the table's band mode for each
HELD = 0.2
DEFAULTS = {"steps": 60, "lr": 0.03, "patience": 15}
GLOBAL_STEP = 0.05


@dataclass
class Step:
    step: int
    fit: float  # the objective on the part of the selection split it is fitted on
    held: float  # ... on the held-out part (early stopping)
    seconds: float


@dataclass
class FitResult:
    granularity: str
    objective: Objective
    names: list[str]  # the fitted values' names (the table's cells, or one per model)
    start: list[float]
    best: list[float]
    history: list[Step] = field(default_factory=list)
    best_step: int = 0
    stopped: bool = False  # Ctrl-C / should_stop: the best so far is kept
    global_weight: float | None = None  # the best single weight for every model and cell (selection split)
    global_loss: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "granularity": self.granularity,
            "objective": self.objective.describe(),
            "values": dict(zip(self.names, self.best)),
            "start": dict(zip(self.names, self.start)),
            "best_step": self.best_step,
            "stopped": self.stopped,
            "steps": [vars(s) for s in self.history],
            "global_weight": self.global_weight,
            "seconds": self.seconds,
        }


def prepare(plan, *, granularity: str, ranges: Mapping | None = None, device: str = "cpu", seed=None, progress=None):
    """(the table's space at the granularity, the plan's LinearForm): what a Problem is made of."""
    from mergescope.merge.linear_form import LinearForm
    from mergescope.search.tune_space import build_space, plan_layout

    if granularity not in GRANULARITIES:
        raise InputError(f"--granularity {granularity}: use one of {', '.join(GRANULARITIES)}")
    if plan.models is None or plan.modules is not None:
        raise InputError(f"{plan.where}slices: fit learns the table of a `models:` plan; write the plan with models:")
    method = plan.method()
    if method.parts is None:
        from mergescope.merge.linear_form import SUPPORTED

        raise InputError(
            f"merge_method {method.name}: fit and sensitivity differentiate {', '.join(SUPPORTED)}; for "
            f"{method.name}, search the table with `mergescope tune` instead"
        )
    names, n_layers = plan_layout(plan)
    space = build_space(
        plan, params=["weight"], band_mode=GRANULARITIES[granularity], ranges=ranges, names=names, num_layers=n_layers
    )
    return space, LinearForm.from_plan(plan, device=device, seed=seed, progress=progress)


def memory_needed(plan, tokens: int | None = None) -> tuple[int, int]:
    """(bytes the weights take: the base and each model's task vector in float32, bytes of a step's work:
    one batch's activations and the merged model with its gradient): stated before a fit starts, on the
    safe side."""
    from mergescope.merge.linear_form import estimate_bytes
    from mergescope.score.loss import BACKWARD_TOKENS

    cks = plan.open_checkpoints()
    try:
        donor = cks.get(plan.config_donor()) or next(iter(cks.values()))
        cfg = dict(donor.config or {})
    finally:
        from mergescope.merge.plan import close_all

        close_all(cks)
    width = max(int(cfg.get("hidden_size") or 0), int(cfg.get("intermediate_size") or 0))
    layers = int(cfg.get("num_hidden_layers") or 1)
    # per token and layer, the backward keeps about a dozen activations of the widest width
    acts = (tokens or BACKWARD_TOKENS) * layers * 12 * width * 4
    weights = estimate_bytes(plan)
    merged = 3 * weights // (len(plan.models or []) + 1)  # the merged model, its detached copy, its gradient
    return weights, acts + merged


def available_bytes(device: str) -> int | None:
    """Free memory where the fit runs (None: unknown)."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Problem:
    """A plan, its table's cells as the fitted values, and the texts: the differentiable objective."""

    def __init__(self, plan, space, form, texts: Mapping[str, bytes], *, granularity: str, device: str = "cpu"):
        import torch

        from mergescope.score.llama import LlamaShape, Unsupported
        from mergescope.score.tokens import tokenizer_for

        try:
            self.shape = LlamaShape.from_config(form.config)
        except Unsupported as exc:
            raise InputError(f"fit and sensitivity run the built-in Llama-family forward: {exc}") from None
        self.plan, self.space, self.form, self.device = plan, space, form, device
        tok = tokenizer_for(form.tokenizer_dir, form.config, plan.config_donor() or "the plan's base")
        from mergescope.score.windows import window_budget

        window, _ = window_budget(form.config, self.shape.max_positions)  # the scorer's default window
        self.windows = {t: text_windows(t, d, tok, window) for t, d in texts.items()}
        dims = [d for d in space.dims if d.param == "weight"]
        self.tied = granularity == "model"
        if self.tied:
            self.names = [f"weight.m{i}" for i in range(len(space.models))]
            index = {(d.key, d.model): d.model for d in dims}
            self.low = [max(d.low for d in dims if d.model == i) for i in range(len(space.models))]
            self.high = [min(d.high for d in dims if d.model == i) for i in range(len(space.models))]
            start = [_first(space.start.values["weight"], i) for i in range(len(space.models))]
        else:
            self.names = [d.name for d in dims]
            index = {(d.key, d.model): k for k, d in enumerate(dims)}
            self.low, self.high = [d.low for d in dims], [d.high for d in dims]
            start = [space.start.values["weight"][d.key][d.model] for d in dims]
        self.start = [min(max(v, lo), hi) for v, lo, hi in zip(start, self.low, self.high)]
        self._index = index
        self._model_of = {m: i for i, m in enumerate(space.models)}
        self._sites: dict[str, list] = {}
        table = space.start.values["weight"]
        for p in form.weighted():
            key = key_in_force(table, p.layer, p.group)
            site = []
            for ref, fixed in zip(p.models, p.fixed):
                i = self._model_of.get(ref)
                if fixed is not None or i is None:
                    site.append(float(fixed if fixed is not None else 1.0))
                elif (key, i) in index:
                    site.append(index[(key, i)])
                else:
                    site.append(float(space.start.value_in_force("weight", p.layer, p.group, i)))
            self._sites[p.name] = site
        self._torch = torch

    def weights_of(self, values) -> Callable:
        """weights_of(piece) for the LinearForm: each term's weight from `values` ([P] tensor) or fixed."""
        torch = self._torch

        def of(piece):
            site = self._sites[piece.name]
            parts = [values[s] if isinstance(s, int) else torch.tensor(s, dtype=torch.float32) for s in site]
            return torch.stack(parts)

        return of

    def losses(self, values, texts: Sequence[str] | None = None, should_stop: ShouldStop | None = None) -> dict:
        """{text: bits per byte} at `values` (no gradient)."""
        with self._torch.no_grad():  # merged once, read by every batch
            tensors = dict(self.form.tensors(self.weights_of(values)).items())
        names = texts or list(self.windows)
        return {
            t: bits_per_byte(tensors, self.shape, self.windows[t], device=self.device, should_stop=should_stop)
            for t in names
        }

    def gradient(self, values, coefs: Mapping[str, float], should_stop: ShouldStop | None = None):
        """({text: bits per byte}, d Σ coef·bpb / d values) at `values` ([P] tensor)."""
        torch = self._torch
        v = values.detach().clone().requires_grad_(True)
        tensors = self.form.tensors(self.weights_of(v))
        leaves = Leaves(tensors, list(self.form.pieces))
        out = {}
        for t, c in coefs.items():
            if c == 0:
                continue
            out[t] = accumulate(leaves, self.shape, self.windows[t], c, device=self.device, should_stop=should_stop)
        leaves.backward()
        return out, (v.grad if v.grad is not None else torch.zeros_like(v))

    def values_table(self, values) -> dict[str, float]:
        """{dimension name: value} as the tune space writes plans from."""
        vals = [float(x) for x in values]
        if not self.tied:
            return dict(zip(self.names, vals))
        return {d.name: vals[d.model] for d in self.space.dims if d.param == "weight"}

    def plan_for(self, values):
        return self.space.plan_for(self.values_table(values))


def _first(table: dict, model: int) -> float:
    return next(iter(table.values()))[model]


def coefficients(objective: Objective, values: Mapping[str, float]) -> dict[str, float]:
    """d objective / d text's bits per byte (the worst text's 1 for `max`)."""
    names = list(values)
    if objective.kind == "max":
        worst = max(names, key=lambda t: values[t])
        return {t: float(t == worst) for t in names}
    if objective.kind == "weights":
        w = dict(objective.weights)
        norm = sum(abs(w.get(t, 0.0)) for t in names)
        return {t: w.get(t, 0.0) / norm for t in names}
    return {t: 1.0 / len(names) for t in names}


def fit(
    problem_for: Callable[[Mapping[str, bytes]], Problem],
    texts: Mapping[str, bytes],
    *,
    granularity: str,
    objective: Objective = MEAN,
    steps: int = DEFAULTS["steps"],
    lr: float = DEFAULTS["lr"],
    patience: int = DEFAULTS["patience"],
    global_sweep: bool = True,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    log: Callable[[Step], None] | None = None,
) -> tuple[FitResult, Problem]:
    """Fit on the selection texts (their last HELD held out for early stopping); Ctrl-C or should_stop
    keeps the best step so far."""
    import torch

    if steps < 1 or not lr > 0 or patience < 1:
        raise InputError("--steps, --lr and --patience must be positive")
    fit_texts, held_texts = split_texts(texts, fraction=HELD)
    problem = problem_for(
        {**{f"fit:{t}": d for t, d in fit_texts.items()}, **{f"held:{t}": d for t, d in held_texts.items()}}
    )
    fit_names, held_names = [f"fit:{t}" for t in texts], [f"held:{t}" for t in texts]

    def reduce(vals: Mapping[str, float], names) -> float:
        return float(objective.reduce({n.split(":", 1)[1]: vals[n] for n in names}))

    values = torch.tensor(problem.start, dtype=torch.float32, requires_grad=True)
    low, high = torch.tensor(problem.low), torch.tensor(problem.high)
    opt = torch.optim.Adam([values], lr=lr)
    result = FitResult(granularity, objective, problem.names, list(problem.start), list(problem.start))
    t0 = time.perf_counter()
    best_held, since = math.inf, 0
    try:
        for k in range(steps + 1):
            ts = time.perf_counter()
            held = reduce(problem.losses(values.detach(), held_names, should_stop), held_names)
            if objective.kind == "max":
                now = problem.losses(values.detach(), fit_names, should_stop)
            else:
                now = {t: 1.0 for t in fit_names}
            coefs = {
                f"fit:{t}": c
                for t, c in coefficients(objective, {n.split(":", 1)[1]: now[n] for n in fit_names}).items()
            }
            if held < best_held - 1e-6:
                best_held, since = held, 0
                result.best, result.best_step = [float(x) for x in values.detach()], k
            else:
                since += 1
            if k == steps or since > patience:
                fit_vals = problem.losses(values.detach(), fit_names, should_stop)
                result.history.append(Step(k, reduce(fit_vals, fit_names), held, time.perf_counter() - ts))
                break
            vals, grad = problem.gradient(values.detach(), coefs, should_stop)
            opt.zero_grad()
            values.grad = grad
            opt.step()
            with torch.no_grad():
                values.copy_(torch.minimum(torch.maximum(values, low), high))
            step = Step(
                k,
                reduce(vals, fit_names) if objective.kind != "max" else reduce(now, fit_names),
                held,
                time.perf_counter() - ts,
            )
            result.history.append(step)
            if log is not None:
                log(step)
            if progress is not None:
                progress(k + 1, steps, f"step {k + 1}: held-out {held:.4f}")
    except (Cancelled, KeyboardInterrupt):
        result.stopped = True
    if global_sweep and not result.stopped:
        result.global_weight, result.global_loss = best_global(problem, objective, fit_names + held_names, should_stop)
    result.seconds = time.perf_counter() - t0
    return result, problem


def best_global(problem: Problem, objective: Objective, names, should_stop=None) -> tuple[float, float]:
    """The one weight for every model and cell that scores best on the selection split (the fit's texts
    and its held-out part): a grid over the weight's range in steps of 2 × GLOBAL_STEP, then the two
    points beside the best (the objective of one weight is smooth and has one minimum in practice)."""
    import torch

    lo, hi = max(problem.low), min(problem.high)
    texts = sorted({n.split(":", 1)[1] for n in names})
    seen: dict[float, float] = {}

    def loss(g: float) -> float:
        g = round(min(max(g, lo), hi), 6)
        if g not in seen:
            vals = problem.losses(torch.full((len(problem.names),), float(g)), names, should_stop)
            seen[g] = float(objective.reduce({t: _whole(problem, vals, t) for t in texts}))
        return seen[g]

    step = 2 * GLOBAL_STEP
    for i in range(int((hi - lo) / step + 1e-9) + 1):
        loss(lo + i * step)
    best = min(seen, key=seen.get)
    loss(best - GLOBAL_STEP)
    loss(best + GLOBAL_STEP)
    best = min(seen, key=seen.get)
    return best, seen[best]


def _whole(problem: Problem, vals: Mapping[str, float], text: str) -> float:
    """A text's bits per byte from its fit and held-out parts (bits over bytes of both)."""
    parts = [(v, problem.windows[n].n_bytes) for n, v in vals.items() if n.split(":", 1)[1] == text]
    return sum(v * b for v, b in parts) / sum(b for _, b in parts)
