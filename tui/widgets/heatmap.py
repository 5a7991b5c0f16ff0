"""A line-API heatmap: rows × columns of coloured numbers with a cell cursor.

Built on `ScrollView` with a bounded LRU of rendered row `Strip`s (toolong-style), so a 126-layer × 10-column
grid scrolls as fast as a small one: a key press re-renders only the rows the cursor left and entered.
The header row and the label column stay in place while the body scrolls.

Every cell carries a level glyph (▁…█) and its number beside the colour, so the map reads the same in
16-colour terminals and for colour-blind users.
"""

from __future__ import annotations

import math

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mergescope.tui.format import compact
from mergescope.tui.state.heatdata import Grid
from mergescope.tui.state.scales import Scale

# viridis, 8 steps: readable as blue → green → yellow in 256 and 16 colours too
SEQUENTIAL = ("#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725")
# red (negative, cancelling) → white → blue (positive, reinforcing)
DIVERGING = ("#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3", "#2166ac")
GLYPHS = "▁▂▃▄▅▆▇█"

CELL_W = 7  # glyph + 5-character number + gap

ABBREV = {
    "input_layernorm": "in_ln",
    "post_attention_layernorm": "pa_ln",
    "pre_feedforward_layernorm": "pf_ln",
    "post_feedforward_layernorm": "pff_ln",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "qkv_proj": "qkv",
    "gate_up_proj": "gateup",
}


def abbrev(col: str) -> str:
    return ABBREV.get(col, col)[: CELL_W - 1]


def _luma(hex_: str) -> float:
    r, g, b = (int(hex_[k : k + 2], 16) / 255 for k in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def palette(diverging: bool) -> tuple[str, ...]:
    return DIVERGING if diverging else SEQUENTIAL


def level(v: float | None, lo: float, hi: float, scale: Scale) -> int | None:
    """Index into the scale's palette (low value → low index, whichever end is good), or None for 'no value'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    n = len(palette(scale.diverging))
    return max(0, min(n - 1, int(scale.position(v, lo, hi) * n)))


def glyph(idx: int, n: int) -> str:
    return GLYPHS[min(len(GLYPHS) - 1, round(idx * (len(GLYPHS) - 1) / max(1, n - 1)))]


# 16-colour terminals: ANSI colours on the glyph and the number, no backgrounds (an ANSI background
# under a number is often unreadable); low → high stays dim → bold.
LOW_SEQUENTIAL = ("blue", "blue", "cyan", "cyan", "green", "green", "yellow", "bright_yellow")
LOW_DIVERGING = ("bright_red", "red", "magenta", "white", "white", "white", "cyan", "blue", "bright_blue")


def low_colour(app) -> bool:
    """True when the terminal has only 16 (or 8) colours, or the app asks for that rendering."""
    forced = getattr(app, "low_colour", None)
    if forced is not None:
        return bool(forced)
    try:
        if app.is_headless:  # tests and screenshots: the colour system of no terminal
            return False
        return app.console.color_system in ("standard", "windows")
    except Exception:  # noqa: BLE001 - no console (tests): assume a capable terminal
        return False


def cell_styles(diverging: bool, low: bool = False, flipped: bool = False) -> list[tuple[Style, Style]]:
    """(glyph style, number style) per palette level; `flipped`: a diverging palette whose good end
    (blue) is the low one (sign conflicts)."""
    out = cell_styles(diverging, low) if flipped else []
    if flipped:
        return out[::-1]
    if low:
        names = LOW_DIVERGING if diverging else LOW_SEQUENTIAL
        n = len(names)
        for k, name in enumerate(names):
            strong = k >= n - 2 or (diverging and k <= 1)
            out.append((Style(color=name, bold=strong), Style(bold=strong)))  # numbers in the default colour
        return out
    for hex_ in palette(diverging):
        fg = "#000000" if _luma(hex_) > 0.45 else "#ffffff"
        out.append((Style(color=hex_), Style(color=fg, bgcolor=hex_)))
    return out


class Heatmap(ScrollView, can_focus=True):
    """Heatmap of a `Grid`; arrow keys move a cell cursor (posts `CursorMoved`)."""

    HELP_TITLE = "Moving in a map (heatmap, plan table, what-if)"

    DEFAULT_CSS = """
    Heatmap { height: 1fr; width: 1fr; scrollbar-size: 1 1; }
    Heatmap:focus { background-tint: $foreground 3%; }
    """

    BINDINGS = [
        Binding("up", "move(-1, 0)", "up", show=False, id="heatmap.up"),
        Binding("down", "move(1, 0)", "down", show=False, id="heatmap.down"),
        Binding("left", "move(0, -1)", "left", show=False, id="heatmap.left"),
        Binding("right", "move(0, 1)", "right", show=False, id="heatmap.right"),
        Binding("pageup", "page(-1)", "page up", show=False, id="heatmap.pageup"),
        Binding("pagedown", "page(1)", "page down", show=False, id="heatmap.pagedown"),
        Binding("home", "jump(0)", "first row", show=False, id="heatmap.home"),
        Binding("end", "jump(-1)", "last row", show=False, id="heatmap.end"),
    ]

    cursor: reactive[tuple[int, int]] = reactive((0, 0), always_update=False, repaint=False)
    STRIP_CACHE_ROWS = 256  # rendered rows kept: several screens of a tall terminal

    class CursorMoved(Message):
        def __init__(self, heatmap: Heatmap, row: int, col: int) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.row = row
            self.col = col

        @property
        def control(self) -> Heatmap:
            return self.heatmap

    def __init__(self, grid: Grid | None = None, *, name=None, id=None, classes=None):
        super().__init__(name=name, id=id, classes=classes)
        self.grid: Grid = grid or Grid("", [], [], [])
        self._cache: LRUCache[int, Strip] = LRUCache(self.STRIP_CACHE_ROWS)
        self._header: Strip | None = None
        self._lo, self._hi = 0.0, 0.0
        self._label_w = 6
        self._styles = cell_styles(False)
        self._setup()

    # -- data -------------------------------------------------------------------------------
    def set_grid(self, grid: Grid, keep_cursor: bool = True) -> None:
        self.grid = grid
        self._setup()
        r, c = self.cursor if keep_cursor else (0, 0)
        self.cursor = self._clamp(r, c)
        self.refresh()
        self.post_message(self.CursorMoved(self, *self.cursor))

    def _setup(self) -> None:
        g = self.grid
        self._cache.clear()
        self._header = None
        self._lo, self._hi = g.bounds()
        self._styles = cell_styles(g.scale.diverging, self._low(), g.scale.flipped)
        self._label_w = max([len(s) for s in g.row_labels] + [4]) + 1
        self.virtual_size = Size(self._label_w + CELL_W * len(g.col_labels), len(g.row_labels) + 1)

    def _low(self) -> bool:
        try:
            return low_colour(self.app)
        except Exception:  # noqa: BLE001 - not mounted yet
            return False

    def on_mount(self) -> None:
        if self._low():
            self._setup()
            self.refresh()

    def _clamp(self, r: int, c: int) -> tuple[int, int]:
        nr, nc = len(self.grid.row_labels), len(self.grid.col_labels)
        return (max(0, min(nr - 1, r)) if nr else 0, max(0, min(nc - 1, c)) if nc else 0)

    @property
    def value(self) -> float | None:
        r, c = self.cursor
        try:
            return self.grid.values[r][c]
        except IndexError:
            return None

    # -- cursor -----------------------------------------------------------------------------
    def watch_cursor(self, old: tuple[int, int], new: tuple[int, int]) -> None:
        self._cache.discard(old[0])
        self._cache.discard(new[0])
        self._header = None
        self._scroll_to_cursor()
        self.refresh()

    def _visible(self) -> Size:
        """The part of the widget not covered by its scrollbars (a row under the horizontal one is hidden)."""
        return self.scrollable_content_region.size

    def _scroll_to_cursor(self) -> None:
        r, c = self.cursor
        seen = self._visible()
        body_h = max(1, seen.height - 1)
        y = self.scroll_offset.y
        if r < y:
            y = r
        elif r >= y + body_h:
            y = r - body_h + 1
        body_w = max(CELL_W, seen.width - self._label_w)
        x = self.scroll_offset.x
        cx = c * CELL_W
        if cx < x:
            x = cx
        elif cx + CELL_W > x + body_w:
            x = cx + CELL_W - body_w
        if (x, y) != (self.scroll_offset.x, self.scroll_offset.y):
            self.scroll_to(x=x, y=y, animate=False, immediate=True)

    def move_to(self, row: int, col: int) -> None:
        new = self._clamp(row, col)
        if new != self.cursor:
            self.cursor = new
            self.post_message(self.CursorMoved(self, *new))

    def action_move(self, dr: int, dc: int) -> None:
        r, c = self.cursor
        self.move_to(r + dr, c + dc)

    def action_page(self, direction: int) -> None:
        r, c = self.cursor
        self.move_to(r + direction * max(1, self._visible().height - 2), c)

    def action_jump(self, row: int) -> None:
        r, c = self.cursor
        self.move_to(row if row >= 0 else len(self.grid.row_labels) - 1, c)

    def on_click(self, event) -> None:
        x, y = event.x, event.y
        if y < 1 or x < self._label_w:
            return
        row = int(self.scroll_offset.y) + y - 1
        col = (int(self.scroll_offset.x) + x - self._label_w) // CELL_W
        if 0 <= row < len(self.grid.row_labels) and 0 <= col < len(self.grid.col_labels):
            self.move_to(row, col)

    def on_resize(self) -> None:
        self._cache.clear()
        self._header = None

    # -- rendering --------------------------------------------------------------------------
    def _cell_segments(self, v: float | None, is_cursor: bool, text: str | None = None) -> list[Segment]:
        txt = text if text is not None else compact(v, pct=self.grid.pct)
        idx = level(v, self._lo, self._hi, self.grid.scale)
        if idx is None:
            st = Style(dim=True, reverse=is_cursor, bold=is_cursor)
            return [Segment(" " + txt.rjust(CELL_W - 2) + " ", st)]
        gst, nst = self._styles[idx]
        g = glyph(idx, len(self._styles))
        if is_cursor:
            nst = nst + Style(reverse=True, bold=True, underline=True)
            gst = gst + Style(bold=True)
            return [Segment(g, gst), Segment(txt.rjust(CELL_W - 2), nst), Segment("◂", Style(bold=True))]
        return [Segment(g, gst), Segment(txt.rjust(CELL_W - 2), nst), Segment(" ")]

    def _row_strip(self, r: int) -> Strip:
        strip = self._cache.get(r)
        if strip is None:
            cur_r, cur_c = self.cursor
            segs: list[Segment] = []
            texts = self.grid.texts
            for c, v in enumerate(self.grid.values[r]):
                segs.extend(self._cell_segments(v, r == cur_r and c == cur_c, texts.get((r, c)) if texts else None))
            strip = Strip(segs, CELL_W * len(self.grid.values[r]))
            self._cache[r] = strip
        return strip

    def _header_strip(self) -> Strip:
        if self._header is None:
            cur_c = self.cursor[1]
            segs = []
            for c, name in enumerate(self.grid.col_labels):
                st = Style(bold=True, underline=c == cur_c, reverse=c == cur_c)
                segs.append(Segment(abbrev(name).center(CELL_W - 1), st))
                segs.append(Segment(" "))
            self._header = Strip(segs, CELL_W * len(self.grid.col_labels))
        return self._header

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        sx, sy = self.scroll_offset
        body_w = max(0, width - self._label_w)
        if y == 0:
            label = Strip([Segment(" " * self._label_w, base)], self._label_w)
            body = self._header_strip()
        else:
            r = sy + y - 1
            if r >= len(self.grid.row_labels):
                return Strip.blank(width, base)
            is_cur = r == self.cursor[0]
            lst = base + Style(bold=True, reverse=True) if is_cur else base + Style(bold=True)
            text = self.grid.row_labels[r][: self._label_w - 1].ljust(self._label_w - 1)
            label = Strip([Segment(text, lst), Segment(" ", base)], self._label_w)
            body = self._row_strip(r)
        body = body.crop_extend(sx, sx + body_w, base).apply_style(base)
        return Strip.join([label, body]).crop(0, width)

    def refresh_all(self) -> None:
        self._cache.clear()
        self._header = None
        self.refresh()
