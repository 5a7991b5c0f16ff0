"""The package version, read by pyproject.toml (setuptools dynamic version) and by the code."""

__version__ = "0.1.0"
