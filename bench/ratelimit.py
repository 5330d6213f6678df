"""Benchmark 2: throughput under a provider rate limit.

The emulator allows K images per sliding window of w seconds (L = 60 K / w images per minute; a short window
keeps the run short). pixelmill runs three times: told the limit (`--ipm L`); told nothing over OpenAI's wire,
where the answers' `x-ratelimit-*` headers state the limit; and told nothing over Gemini's wire, which sends
no such headers (the limit must be learned from the 429s and their RetryInfo). Achieved rate = images
accepted per second in the steady state, i.e. after the first window (a fresh window lets a burst of K through
at once, which no long run enjoys); 429 share = 429s / requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.emulator import EmulatorProcess, Request
from bench.harness import Row, client_command, run_client, write_prompts

TARGET_RATIO, TARGET_429 = 0.95, 0.02
GEMINI_MODEL = "gemini-3.1-flash-image"
CASES = ("ipm", "nolimit", "nolimit-gemini")


def run(workdir: Path, n: int, *, per_window: int = 60, window: float = 3.0, concurrency: int = 32,
        profile: bool = False) -> list[Row]:
    limit_per_minute = per_window * 60.0 / window
    rows = []
    with EmulatorProcess(latency=0.2, latency_sigma=0.5, seed=0) as emu:
        emu.warm()
        for case in CASES:
            told = case == "ipm"
            tag = f"ratelimit-{case}-n{n}"
            prompts = write_prompts(workdir / f"{tag}.jsonl", n, tag)
            emu.configure(seed=0, ipm=per_window, rate_window=window)  # also empties the window
            emu.reset()
            flags = ["--concurrency", str(concurrency)]
            if told:
                flags += ["--ipm", f"{limit_per_minute:g}"]
            if case == "nolimit-gemini":
                flags += ["--provider", "gemini", "--model", GEMINI_MODEL, "--api-key", "AIzaBENCH-not-a-key"]
                command = client_command(prompts, workdir / tag, emu.url, *flags)
                endpoint = "generateContent"
            else:
                command = client_command(prompts, workdir / tag, emu.openai_url, *flags)
                endpoint = "generations"
            client = run_client(workdir, command, name=tag, profile=profile)
            log = [r for r in emu.log() if r.endpoint == endpoint]
            emu.configure(ipm=None)
            rows.append(_row(tag, case, log, limit_per_minute, window, client.report, client.exit_code))
    return rows


def _row(tag: str, case: str, log: list[Request], limit_per_minute: float, window: float,
         report: dict[str, Any], exit_code: int) -> Row:
    ok = sorted((r for r in log if r.status == 200), key=lambda r: r.started)
    limited = sum(1 for r in log if r.status == 429)
    first, last = ok[0].started, ok[-1].started
    begin = first + window
    whole = int((last - begin) // window)
    end = begin + whole * window
    steady = [r for r in ok if begin <= r.started < end]
    steady_rate = len(steady) / (end - begin) if whole > 0 else float("nan")
    whole_rate = (len(ok) - 1) / (last - first) if last > first else float("nan")
    limit_rate = limit_per_minute / 60.0
    ratio = steady_rate / limit_rate
    share = limited / len(log)
    return Row(
        bench="ratelimit", case={"ipm": f"--ipm {limit_per_minute:g}", "nolimit": "no limit flag (headers)",
                                 "nolimit-gemini": "no limit flag, no headers (Gemini)"}[case],
        figure=round(ratio, 3), unit="steady images/s / limit", target=f">= {TARGET_RATIO}, 429s < 2%",
        ok=ratio >= TARGET_RATIO and share < TARGET_429,
        details={
            "limit_per_minute": limit_per_minute, "window_s": window, "windows_measured": whole,
            "answered": len(ok), "requests": len(log),
            "rate_limited_429": limited, "share_429": round(share, 4), "exit_code": exit_code,
            "steady_images_per_s": round(steady_rate, 3), "limit_images_per_s": round(limit_rate, 3),
            "whole_run_images_per_s": round(whole_rate, 3), "whole_run_over_limit": round(whole_rate / limit_rate, 3),
            "span_s": round(max(r.ended for r in ok) - first, 3),
            "client_cpu_s": round(report["command_cpu_s"], 3), "client_wall_s": round(report["command_wall_s"], 3),
        },
    )
