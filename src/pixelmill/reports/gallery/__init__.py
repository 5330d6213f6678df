"""The gallery: one self-contained HTML page of a run (page.py builds it, assets.py holds its style and script)."""
