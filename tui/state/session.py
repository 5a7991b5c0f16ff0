"""What is open and what is planned: the report, the model set, the plan being edited and a report
re-measured for it, with the rules that tie them together.

No widgets here: the app shows what the session holds and asks it what to do next.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mergescope.tui.state.evaluation import EvalStore
from mergescope.tui.state.plan_state import PlanState, starting_state, state_for_report
from mergescope.tui.state.recent import ModelSet

SAME = 1e-9  # two densities closer than this are the same measurement


@dataclass(frozen=True)
class RemeasureTarget:
    """The models and density whose analysis measures exactly the plan's interference."""

    models: list[str]
    density: float
    uniform: bool = True  # False: the plan's densities vary; `density` is then the analysis density

    def measured_by(self, report) -> bool:
        """True when `report` analysed these models at this density."""
        return report is not None and list(report.models) == self.models and abs(report.density - self.density) < SAME


class Session:
    def __init__(
        self,
        *,
        sample_plan: dict | None = None,
        output_dir: str | None = None,
        auto_remeasure_bytes: int = 0,
        texts: Iterable[str] = (),
    ) -> None:
        self.sample_plan = sample_plan  # {"method", "models", "weight", "density"}: the demo's starting plan
        self.output_dir = output_dir  # the merge's starting output directory
        self.auto_remeasure_bytes = auto_remeasure_bytes
        self.model_set: ModelSet | None = None
        self.report = None
        self.plan_state: PlanState | None = None
        self.remeasured = None  # a report re-measured for the plan
        self.sensitivity = None  # the last sensitivity pass of the plan (state/sensitivity_map.py)
        self.last_export: str | None = None
        self.texts = list(texts)  # held-out text files the Evaluate tab scores on
        self.evals = EvalStore()

    # -- the report and its plan ------------------------------------------------------------
    def analysed(self, report) -> Exception | None:
        """A new main report: a fresh plan from the set's plan file, else the sample or a default table.
        Returns why the plan file could not be used (the default table is used instead)."""
        from mergescope.io.errors import InputError

        self.report, self.remeasured, self.sensitivity = report, None, None
        self.evals.forget_latest()
        state, problem = None, None
        path = self.model_set.plan if self.model_set else None
        if path:
            try:
                state = self.state_from_file(path)
            except InputError as exc:
                problem = exc
        if state is None and self.sample_plan:
            state = state_for_report(report, "task_arithmetic")
            self._apply_sample(state)
        elif state is None:
            state = starting_state(report)
        self.plan_state = state
        return problem

    def _apply_sample(self, state: PlanState) -> None:
        sample, report = self.sample_plan, self.report
        state.set_method(sample.get("method", "ties"))
        names = {Path(m).name: i for i, m in enumerate(report.models)}
        chosen = [names[n] for n in sample.get("models", []) if n in names]
        state.included = [i in chosen for i in range(len(report.models))]
        for param, value in (("weight", sample.get("weight")), ("density", sample.get("density"))):
            if value is not None and param in state.table_params():
                table = state.table(param)
                for key in table:
                    table[key] = [float(value)] * len(report.models)
        merged = " + ".join(n for n in sample.get("models", []) if n in names)
        state.note = f"starting plan: the demo's sample, {state.method} of {merged or 'no model'}"

    def state_from_file(self, path: str) -> PlanState:
        """The editor state for a plan file (InputError / OSError when it cannot be read or used)."""
        from mergescope.merge.plan import Plan

        plan = Plan.load(os.path.expanduser(path))
        names = sorted({t for s in self.report.sites for t in s.tensors})
        state = PlanState.from_plan(plan, self.report, names=names)
        state.source = path
        return state

    def load_plan(self, path: str) -> PlanState:
        self.plan_state = self.state_from_file(path)
        return self.plan_state

    def reset_plan(self) -> PlanState:
        """An editable default table for the current method (replaces a hand-written plan)."""
        self.plan_state = state_for_report(self.report, self.plan_state.method)
        return self.plan_state

    def current_plan(self):
        """The Plan being edited (InputError when it cannot be built)."""
        if self.plan_state is None:
            from mergescope.io.errors import InputError

            raise InputError("no analysis yet: open a model set first (o)")
        return self.plan_state.to_plan()

    def plan_or_problem(self) -> tuple[object, str | None, str | None]:
        """(plan, its YAML, None), or (None, None, why it cannot be built yet)."""
        from mergescope.io.errors import InputError

        try:
            plan = self.current_plan()
            return plan, plan.to_yaml(), None
        except (InputError, ValueError) as exc:
            return None, None, str(exc)

    def eval_key(self, kind: str) -> str | None:
        """What an Evaluate result depends on besides the texts: the plan's YAML, or for a soup the
        open models (None: nothing to evaluate yet)."""
        if kind == "soup":
            r = self.report
            return None if r is None else "\n".join([r.base, *r.models])
        return self.plan_or_problem()[1]

    # -- where things go --------------------------------------------------------------------
    def default_output(self) -> str:
        """The merge's output directory: `merged` in the working directory (never beside the inputs,
        which may be a read-only cache or someone else's models), as the CLI writes where it is run."""
        if self.output_dir:
            return self.output_dir
        return str(Path.cwd() / "merged")

    def export_default(self) -> str:
        st = self.plan_state
        return self.last_export or (st.source if st and st.source else str(Path.cwd() / "merge_plan.yaml"))

    def export(self, plan, path: str) -> Path:
        """Write `plan` to `path` (a directory gets merge_plan.yaml); InputError when it cannot be written or
        would land on or in one of the plan's models (io.guard; the path was chosen, so a file there is
        replaced)."""
        from mergescope.io.errors import InputError
        from mergescope.io.guard import Write, check_io
        from mergescope.merge.run import plan_reads

        try:
            target = Path(os.path.expanduser(path))
            if target.is_dir():
                target = target / "merge_plan.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            check_io(plan_reads(plan), [Write(target, "export", plan=True)], force=True)
            plan.dump(target)
        except OSError as exc:
            raise InputError(f"{path}: cannot write ({exc.strerror}); pick a writable path") from None
        self.last_export = str(target)
        if self.plan_state is not None:
            self.plan_state.source = str(target)
        return target

    # -- re-measuring for the plan ----------------------------------------------------------
    def small(self) -> bool:
        """True when an analysis of this set takes a second or two: re-measures then start unasked."""
        read = self.report.bytes_read if self.report is not None else 0
        return bool(read and read < self.auto_remeasure_bytes)

    def remeasure_target(self) -> RemeasureTarget | None:
        """Which models at which density measure this plan's interference (None: nothing is open)."""
        st, report = self.plan_state, self.report
        if st is None or report is None:
            return None
        from mergescope.merge.whatif import conflict_is_trimmed

        models = [st.models[i] for i in st.chosen()]
        if not conflict_is_trimmed(st.method):  # the untrimmed conflict does not depend on the density
            return RemeasureTarget(models, report.density)
        density = self._plan_density()
        if density is None:
            return RemeasureTarget(models, report.density, uniform=False)
        return RemeasureTarget(models, min(1.0, density))

    def _plan_density(self) -> float | None:
        """The one density the plan gives its models, or None when it varies. A table is read as it
        is; a hand-written plan is resolved (slower, and it changes only when loaded)."""
        st = self.plan_state
        if st.custom is None:
            return st.uniform_value("density")
        from mergescope.merge.whatif import from_plan, uniform_density

        return uniform_density(from_plan(self.report, st.custom))

    def auto_remeasure(self) -> RemeasureTarget | None:
        """The re-measure to start unasked: a small set, a table plan, not measured yet."""
        if not self.small() or self.plan_state is None or self.plan_state.custom is not None:
            return None
        target = self.remeasure_target()
        if target is None or len(target.models) < 2 or target.measured_by(self.report):
            return None
        return None if target.measured_by(self.remeasured) else target

    def conflict_report(self):
        """The re-measured report, when it measured exactly the plan's models."""
        r, st = self.remeasured, self.plan_state
        if r is None or self.report is None or st is None:
            return None
        if r.base == self.report.base and r.models == [st.models[i] for i in st.chosen()]:
            return r
        return None
