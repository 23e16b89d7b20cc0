"""The package's version: written here once, read by pyproject.toml (setuptools' dynamic version),
`search.__version__` and the provenance every artifact carries. Imports nothing."""

__version__ = "0.1.0"
