"""The one main screen: tabs for verdicts, the measured heatmap, the plan editor, the merge and the
evaluation of the plan."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane, Tabs

from mergescope.tui.widgets.eval_view import EvalView
from mergescope.tui.widgets.heatmap_view import HeatmapView
from mergescope.tui.widgets.progress import JobProgress
from mergescope.tui.widgets.verdicts import VerdictsView

TABS = ("verdicts", "heatmap", "plan", "merge", "evaluate")
FOCUS = {
    "verdicts": "#verdicts-view",
    "heatmap": "#heatmap",
    "plan": "#ratio-table",
    "merge": "#merge-go",
    "evaluate": "#eval-results",
}


class MainScreen(Screen):
    HELP_TITLE = "Tabs"
    PALETTE_GROUP = ""
    BINDINGS = [
        Binding("v", "tab('verdicts')", "verdicts", tooltip="Show verdicts", id="main.verdicts"),
        Binding("h", "tab('heatmap')", "heatmap", tooltip="Show heatmap", id="main.heatmap"),
        Binding("e", "tab('plan')", "plan", tooltip="Show plan", id="main.plan"),
        Binding("x", "tab('merge')", "merge", tooltip="Show merge", id="main.merge"),
        Binding("u", "tab('evaluate')", "evaluate", tooltip="Show evaluate", id="main.evaluate"),
        Binding(
            "escape",
            "escape",
            "cancel job / leave a field",
            show=False,
            tooltip="Cancel the running job",
            id="main.cancel",
        ),
    ]

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with TabbedContent(initial="verdicts", id="tabs"):
            with TabPane("Verdicts v", id="verdicts"):
                yield VerdictsView(id="verdicts-view")
            with TabPane("Heatmap h", id="heatmap"):
                yield HeatmapView(id="heatmap-view")
            with TabPane("Plan e", id="plan"):
                yield from self.app.compose_plan_tab()
            with TabPane("Merge x", id="merge"):
                yield from self.app.compose_merge_tab()
            with TabPane("Evaluate u", id="evaluate"):
                yield EvalView(id="eval-view")
        with Vertical(id="bottom-bar"):  # one bottom dock: two docked widgets would overlap
            yield JobProgress(id="job-progress")
            yield Footer()

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = tab
        self.focus_tab(tab)

    def focus_tab(self, tab: str) -> None:
        pane = self.query_one(f"TabPane#{tab}")
        found = pane.query(FOCUS[tab])
        if found:
            found.first().focus()

    def action_escape(self) -> None:
        """Esc cancels a running job; otherwise it leaves a text field for the tab's main widget."""
        from textual.widgets import Input, Select

        if self.app.running_jobs():
            self.app.action_cancel_job()
        elif isinstance(self.focused, (Input, Select)):
            self.focus_tab(self.query_one(TabbedContent).active)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane is not None and event.pane.id == "evaluate":
            self.app.show_eval()  # the plan may have changed on another tab
        if event.pane is not None and event.pane.id and not isinstance(self.focused, Tabs):
            self.call_after_refresh(self.focus_tab, event.pane.id)
