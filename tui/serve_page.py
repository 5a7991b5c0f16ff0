"""The page `mergescope serve` hands to browsers: textual-serve's own, plus a script that focuses the
terminal, so keys reach the app without a click first.

textual-serve's page draws the app in an xterm.js terminal, which takes keys only once its hidden input
has the browser's focus; nothing gives it that focus until the user clicks. The script focuses that
input as soon as the terminal creates it, and again when the browser window regains focus. The page is
read from the installed textual-serve at start, so its version's page is the one served.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = "app_index.html"
FOCUS_SCRIPT = """<script>
  /* mergescope: keys reach the app without a click first */
  (function () {
    function focusTerminal() {
      var input = document.querySelector("#terminal textarea");
      if (!input) return false;
      if (document.activeElement !== input) input.focus({ preventScroll: true });
      return true;
    }
    var tries = 0;
    var timer = setInterval(function () {
      if (focusTerminal() || ++tries > 400) clearInterval(timer);
    }, 50);
    window.addEventListener("focus", focusTerminal);
  })();
</script>
"""


def focused_page(html: str) -> str:
    """textual-serve's page with the focus script at the end of its body."""
    head, sep, tail = html.rpartition("</body>")
    return head + FOCUS_SCRIPT + sep + tail if sep else html + FOCUS_SCRIPT


def write_templates(folder: Path) -> Path:
    """The templates folder for textual-serve's Server (`templates_path`): its page with the script."""
    import textual_serve

    page = Path(textual_serve.__file__).parent / "templates" / TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TEMPLATE).write_text(focused_page(page.read_text(encoding="utf-8")), encoding="utf-8")
    return folder
