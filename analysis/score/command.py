"""Running `--eval-cmd`: the argument vector is built here, never by a shell, and each run gets its own
process group, so a timeout ends the command and everything it started.

The template is split into words as a POSIX shell would (quotes group, backslashes escape), then
`{model}` and `{text}` are replaced inside each word by the path as it is: a folder whose name holds
`;`, `$( )`, backticks or quotes is one argument, never code. Pipes and redirections are plain words
too; a command that needs them runs `sh -c 'CMD "$1"' _ {model}` (the path arrives as "$1").
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess

from mergescope.io.errors import InputError

_FIELD = re.compile(r"\{(model|text)\}")


def command_argv(template: str, model: str, text: str | None = None) -> list[str]:
    """The words of `template` with {model} / {text} replaced (one pass: a path holding "{text}" stays)."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise InputError(f"--eval-cmd {template!r}: cannot split it into words ({exc}); close the quotes") from None
    if not words:
        raise InputError("--eval-cmd: empty; give a command such as 'python score.py {model}'")
    values = {"model": model, "text": text if text is not None else "{text}"}
    return [_FIELD.sub(lambda m: values[m.group(1)], w) for w in words]


def check_command(template: str, has_texts: bool) -> None:
    """The template's problems, before any model is touched."""
    if "{model}" not in template:
        raise InputError(f"--eval-cmd {template!r}: must contain {{model}}, where the model directory goes")
    if "{text}" in template and not has_texts:
        raise InputError(f"--eval-cmd {template!r}: uses {{text}}, so give --text FILE ...")
    command_argv(template, "m", "t")


def run_command(argv: list[str], label: str, timeout: float | None) -> float:
    """Run `argv` in a new session (its own process group); the number on the last line of its stdout.
    On a timeout, an error or Ctrl-C the whole group is killed."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as exc:
        raise InputError(
            f"--eval-cmd on {label}: cannot run {argv[0]!r} ({exc.strerror}); check the command's first word"
        ) from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise InputError(
            f"--eval-cmd on {label}: no answer within {timeout:g} s (the command and its children were "
            "stopped); raise --eval-timeout"
        ) from None
    except BaseException:
        kill_group(proc)
        raise
    if proc.returncode != 0:
        tail = (err.strip().splitlines() or ["(no stderr)"])[-1][:160]
        raise InputError(f"--eval-cmd on {label}: exited with {proc.returncode} ({tail}); run it by hand to see why")
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    try:
        return float(last.split()[-1])
    except (ValueError, IndexError):
        raise InputError(
            f"--eval-cmd on {label}: its last line of output is {last[:80]!r}, not a number; make the command "
            "print the score last"
        ) from None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads, then reap it and close its pipes."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
