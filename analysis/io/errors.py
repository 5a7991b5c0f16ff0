"""One base class for every error caused by the user's input (paths, files, plans).

The CLI turns these into a one-line message and exit code 2; the TUI into an error dialog.
Messages name the file or key at fault and say what to do.
"""


class InputError(Exception):
    """Bad input from the user: message names the file/key and the fix."""
