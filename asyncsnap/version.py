"""The version, in a module of its own so that any module can read it without importing
the package's public API, and written here as a literal: pyproject.toml takes it from this
line (``dynamic = ["version"]``), and ``asyncsnap --version`` prints it without reading the
installed metadata (importlib.metadata costs about 20 ms of every such start)."""

__version__ = "0.9.0"
