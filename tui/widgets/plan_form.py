"""The plan editor's form, mixed into it: the method and the method's global parameters, validated as
they are typed (a bad value is said beside the form, the plan keeps the last good one)."""

from __future__ import annotations

from textual.containers import Horizontal
from textual.widgets import Checkbox, Input, Label, Select

from mergescope.tui.widgets.inputs import AppInput


class PlanForm:
    """Mixin for PlanEditor (it provides `state`, `set_method`, `show_problem`, `_editable`, `_toolbar`,
    `Changed`)."""

    _form_method = None  # what the form was built for: rebuilt only when that changes

    async def _build_form(self) -> None:
        st = self.state
        if st is None:
            return
        key = (st.method, tuple(sorted(st.globals.items(), key=lambda kv: kv[0])), st.custom is None)
        if key == self._form_method:
            return
        self._form_method = key
        from mergescope.merge.methods import REGISTRY

        form = self.query_one("#plan-form", Horizontal)
        await form.remove_children()
        widgets = [
            Label("method", classes="method-label"),
            Select([(m, m) for m in REGISTRY], value=st.method, allow_blank=False, compact=True, id="plan-method"),
        ]
        for spec in st.global_specs():
            if spec.name == "int8_mask":
                continue  # memory option, no numerical effect
            value = st.global_value(spec.name)
            if spec.kind == "bool":
                widgets.append(
                    Checkbox(_onoff(spec.name, bool(value)), bool(value), id=f"global-{spec.name}", tooltip=spec.help)
                )
            else:
                widgets.append(Label(spec.name))
                widgets.append(
                    AppInput(
                        "" if value is None else f"{value}",
                        id=f"global-{spec.name}",
                        compact=True,
                        placeholder="required" if spec.required else "default",
                        tooltip=spec.help,
                    )
                )
        await form.mount_all(widgets)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if (
            event.select.id == "plan-method"
            and self.state is not None
            and event.value != self.state.method
            and event.value is not Select.NULL
        ):
            self.set_method(str(event.value))

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        if event.checkbox.id and event.checkbox.id.startswith("global-"):
            event.checkbox.label = _onoff(event.checkbox.id[len("global-") :], event.value)
        self._set_global(event.checkbox.id, event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._set_global(event.input.id, event.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._set_global(event.input.id, event.value, quiet=True)

    def _set_global(self, wid: str | None, value, quiet: bool = False) -> None:
        if not wid or not wid.startswith("global-") or self.state is None:
            return
        from mergescope.io.errors import InputError

        name = wid[len("global-") :]
        if self.state.global_value(name) == value or f"{self.state.global_value(name)}" == f"{value}":
            return
        if self.state.custom is not None:
            if not quiet:
                self._editable()
            return
        try:
            self.state.set_global(name, value)
        except InputError as exc:
            self.show_problem(str(exc))
            return
        self.show_problem(None)
        self._form_method = (
            self.state.method,
            tuple(sorted(self.state.globals.items(), key=lambda kv: kv[0])),
            self.state.custom is None,
        )
        self._toolbar()
        self.post_message(self.Changed())


def _onoff(name: str, value: bool) -> str:
    """A checkbox label that says its state in words (the box itself differs only by colour)."""
    return f"{name}: {'on' if value else 'off'}"
