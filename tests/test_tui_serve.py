"""`mergescope serve`: the page browsers get focuses the terminal, so keys work without a click first."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from mergescope.tui.serve_page import FOCUS_SCRIPT, focused_page, write_templates

pytest.importorskip("textual_serve", reason="the [serve] extra (textual-serve) is not installed")


@pytest.mark.asyncio
async def test_the_served_page_is_textual_serves_with_the_focus_script(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer
    from textual_serve.server import Server

    from mergescope.tui.commands.serve import command_line

    server = Server(command_line(["demo"]), title="mergescope", templates_path=write_templates(tmp_path / "t"))
    async with TestClient(TestServer(await server._make_app())) as client:
        resp = await client.get("/")
        page = await resp.text()
    assert resp.status == 200
    assert 'id="terminal"' in page and "data-session-websocket-url" in page  # textual-serve's own page
    body_end = page.rindex("</body>")
    assert page.index(FOCUS_SCRIPT.strip().splitlines()[0]) < body_end  # the script runs inside the body


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_the_script_focuses_the_terminal_input_once_it_exists_and_on_window_focus():
    """The script in a minimal DOM: nothing to focus at first, then xterm's input appears, is focused,
    loses the focus, and gets it back when the window is focused again."""
    script = focused_page("<body></body>").split("<script>", 1)[1].split("</script>", 1)[0]
    harness = """
    const calls = [];
    let input = null, timers = [], onFocus = null;
    const document = {
      activeElement: null,
      querySelector: (sel) => (sel === "#terminal textarea" ? input : null),
    };
    const window = { addEventListener: (ev, fn) => { if (ev === "focus") onFocus = fn; } };
    const setInterval = (fn) => { timers.push(fn); return timers.length; };
    const clearInterval = (id) => { timers[id - 1] = null; };
    const tick = () => timers.forEach((fn) => fn && fn());
    SCRIPT
    tick();
    calls.push(["before", document.activeElement]);
    input = { focus: (opts) => { document.activeElement = input; calls.push(["focus", opts]); } };
    tick(); tick();
    document.activeElement = "elsewhere";
    onFocus();
    console.log(JSON.stringify({calls, pending: timers.filter(Boolean).length}));
    """.replace("SCRIPT", script)
    out = subprocess.run(["node", "-e", harness], capture_output=True, text=True, timeout=30, check=True)
    got = json.loads(out.stdout)
    assert got["calls"] == [["before", None], ["focus", {"preventScroll": True}], ["focus", {"preventScroll": True}]]
    assert got["pending"] == 0  # the polling stopped once the input had the focus
