"""The package's version, written once: here. `pyproject.toml` reads it (hatch's version source), `pixelmill
--version` prints it, and the HTTP user agent names it; a module of its own so that any layer can import it."""

VERSION = "0.1.0"
