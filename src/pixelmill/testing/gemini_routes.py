"""Gemini routes (placeholder until the Gemini emulation lands)."""

from __future__ import annotations

from aiohttp import web

from pixelmill.testing.server import Emulator


def register(app: web.Application, emu: Emulator) -> None:
    return None
