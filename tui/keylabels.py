"""Keys as people read them (`question_mark` -> `?`), for the help screen and toolbars."""

from __future__ import annotations

NICE = {
    "escape": "Esc",
    "enter": "Enter",
    "question_mark": "?",
    "plus": "+",
    "minus": "-",
    "equals_sign": "=",
    "underscore": "_",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "pageup": "PgUp",
    "pagedown": "PgDn",
    "up": "↑",
    "down": "↓",
    "left": "←",
    "right": "→",
    "tab": "Tab",
    "shift+tab": "Shift+Tab",
    "full_stop": ".",
    "comma": ",",
    "slash": "/",
    "less_than_sign": "<",
    "greater_than_sign": ">",
    "asterisk": "*",
    "number_sign": "#",
    "exclamation_mark": "!",
    "at": "@",
    "dollar_sign": "$",
    "percent_sign": "%",
}


def key_label(key: str) -> str:
    return "/".join(NICE.get(k, k.replace("ctrl+", "Ctrl+")) for k in key.split(","))
