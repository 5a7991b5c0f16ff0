"""mergescope's UI-free core: checkpoints, metrics, findings, merge methods, plans and the writer.

Importing this package is cheap and never imports textual; torch work happens only when asked.
"""

__version__ = "0.1.0"
