"""The gallery page's own style and script (`gallery.css`, `gallery.js`, package data): static text, never built
from data, inlined into the page.

The script reads the rows from one JSON block (`<script type="application/json">`, inert: it never runs) and
builds the cards in view with `textContent` and attributes only; it never writes HTML, so nothing from the data
can become markup. The page's Content-Security-Policy allows exactly this script (by its hash), inline styles,
images from data URLs and local files: no network, no other script, no inline event handler. The marks export is
a download link to a `blob:` URL the script makes, which no directive needs to allow.
"""

from __future__ import annotations

import base64
import hashlib
from importlib.resources import files

_HERE = files("pixelmill.reports.gallery")
STYLE = _HERE.joinpath("gallery.css").read_text(encoding="utf-8")
SCRIPT = _HERE.joinpath("gallery.js").read_text(encoding="utf-8")


def script_hash() -> str:
    """The CSP source that allows `SCRIPT` and nothing else."""
    digest = hashlib.sha256(SCRIPT.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy() -> str:
    return (
        "default-src 'none'; img-src data: file: 'self'; style-src 'unsafe-inline'; "
        f"script-src {script_hash()}; base-uri 'none'; form-action 'none'; connect-src 'none'"
    )
