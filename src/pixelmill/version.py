"""The package's version, in a module of its own so that any layer can name it (the HTTP user agent does)."""

VERSION = "0.1.0"
