"""The gallery page's own style and script: static text, never built from data.

The script only toggles the `hidden` attribute of cards from `data-status` and `data-search` (already
escaped attributes); it never writes HTML, so nothing from the data can become markup. The page's
Content-Security-Policy allows exactly this script (by its hash), inline styles, and images from data URLs
and local files: no network, no other script.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root { color-scheme: light dark; --bg: #f6f6f4; --card: #fff; --ink: #1d1d1b; --muted: #6b6b66; --line: #ddd;
  --done: #2f7d32; --failed: #b3261e; --pending: #8a6d00; --accent: #2956a3; }
@media (prefers-color-scheme: dark) { :root { --bg: #161615; --card: #222220; --ink: #ecece8; --muted: #a3a39c;
  --line: #3a3a37; --accent: #8fb0ea; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg);
  color: var(--ink); }
header { position: sticky; top: 0; z-index: 2; background: var(--bg); border-bottom: 1px solid var(--line);
  padding: 12px 20px; }
h1 { font-size: 18px; margin: 0 0 4px; }
.summary { color: var(--muted); margin: 0 0 10px; }
.controls { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
.controls button { border: 1px solid var(--line); background: var(--card); color: var(--ink); border-radius: 16px;
  padding: 4px 12px; cursor: pointer; font: inherit; }
.controls button[aria-pressed="true"] { background: var(--accent); border-color: var(--accent); color: #fff; }
.controls input { flex: 1 1 240px; max-width: 420px; padding: 5px 10px; border: 1px solid var(--line);
  border-radius: 16px; background: var(--card); color: var(--ink); font: inherit; }
.shown { color: var(--muted); }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 14px; padding: 16px 20px; }
.card { display: flex; flex-direction: column; gap: 8px; background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; padding: 10px; min-width: 0; }
.card[hidden] { display: none !important; }
.card.failed { border-color: var(--failed); }
.strip { display: flex; align-items: flex-start; gap: 6px; overflow-x: auto; padding-bottom: 2px; }
.stage { display: flex; flex-direction: column; gap: 3px; min-width: 0; }
.stage .label { font-size: 11px; color: var(--muted); white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  max-width: 260px; }
.thumbs { display: flex; gap: 4px; }
.thumbs img { display: block; max-width: 128px; max-height: 128px; border-radius: 4px; background: #8883;
  object-fit: contain; }
.strip.single .thumbs img { max-width: 100%; max-height: 260px; }
.arrow { align-self: center; color: var(--muted); font-size: 18px; padding: 0 2px; }
.missing { display: flex; align-items: center; justify-content: center; width: 96px; height: 96px; border-radius: 4px;
  border: 1px dashed var(--line); color: var(--muted); font-size: 11px; text-align: center; padding: 4px;
  overflow: hidden; word-break: break-all; }
.prompt { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; display: -webkit-box; -webkit-line-clamp: 5;
  -webkit-box-orient: vertical; overflow: hidden; }
.meta { display: flex; flex-wrap: wrap; gap: 4px 10px; color: var(--muted); font-size: 12px; }
.badge { font-weight: 600; text-transform: uppercase; font-size: 11px; }
.badge.done { color: var(--done); } .badge.failed { color: var(--failed); } .badge.pending { color: var(--pending); }
.error { margin: 0; padding: 6px 8px; border-radius: 6px; background: #b3261e1a; color: var(--failed);
  white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; }
.turns { margin: 0; padding-left: 18px; color: var(--muted); font-size: 12px; }
footer { color: var(--muted); padding: 0 20px 20px; font-size: 12px; }
"""

SCRIPT = """
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("main .card"));
  var buttons = Array.prototype.slice.call(document.querySelectorAll(".controls button[data-filter]"));
  var search = document.getElementById("search");
  var shown = document.getElementById("shown");
  var state = { filter: "all", query: "" };
  function apply() {
    var count = 0;
    cards.forEach(function (card) {
      var ok = (state.filter === "all" || card.getAttribute("data-status") === state.filter) &&
        (!state.query || (card.getAttribute("data-search") || "").indexOf(state.query) !== -1);
      card.hidden = !ok;
      if (ok) { count += 1; }
    });
    buttons.forEach(function (b) {
      b.setAttribute("aria-pressed", b.getAttribute("data-filter") === state.filter ? "true" : "false");
    });
    shown.textContent = String(count);
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () { state.filter = b.getAttribute("data-filter"); apply(); });
  });
  search.addEventListener("input", function () { state.query = search.value.trim().toLowerCase(); apply(); });
  var wanted = (location.hash || "").slice(1);
  if (["all", "done", "failed", "pending"].indexOf(wanted) !== -1) { state.filter = wanted; }
  apply();
})();
"""


def script_hash() -> str:
    """The CSP source that allows `SCRIPT` and nothing else."""
    digest = hashlib.sha256(SCRIPT.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy() -> str:
    return (
        "default-src 'none'; img-src data: file: 'self'; style-src 'unsafe-inline'; "
        f"script-src {script_hash()}; base-uri 'none'; form-action 'none'; connect-src 'none'"
    )
