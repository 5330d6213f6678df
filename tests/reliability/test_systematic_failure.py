"""Stop on systematic failure (engine/systematic.py): when the first calls of a step all fail the same way for a
reason that is not the rows' (cannot connect, the host name unknown, TLS, the same 400 or 404 from a gateway, the
same 5xx once a few rows ran out of retries), the run stops within seconds (exit 3) with the reason and the fix,
and the rows not done stay pending. Row-specific failures (refusals, a rejection naming the row's prompt or image)
and failures after the step has had answers never stop it. Many 429s make the summary suggest the limit flags.

Every "does not stop" case runs next to the same server answering so that it does stop: the judgement is what
is tested, not only its absence.
"""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path
from typing import Any

from pixelmill.engine.systematic import REJECTED_CALLS, SERVER_ROWS
from tests.reliability.hostile_answers import Canned, ScriptedServer, openai_image
from tests.runs import TEST_KEY, cli, prompts, read_output, write_jsonl

ROWS = 40


def closed_port() -> int:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def requests_made(output: str) -> int:
    found = re.search(r"this run: \d+ images from (\d+) requests", output)
    assert found, output
    return int(found.group(1))


def statuses(run: Path) -> list[str]:
    rows = read_output(run)
    assert len(rows) == ROWS  # every row is in the output
    return [row["pixelmill"]["status"] for row in rows]


def run_against(server: ScriptedServer, tmp_path: Path, name: str, *args: str, rows: int = ROWS,
                base: str = "/v1") -> Any:
    src = write_jsonl(tmp_path / f"{name}.jsonl", prompts(rows, name))
    return cli("generate", src, "-o", tmp_path / name, "--base-url", server.url + base, *args)


def test_a_closed_port_stops_in_seconds_with_a_handful_of_attempts(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    src = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS))
    # --max-retries 2 keeps the code as it was (every row tried 3 times, 120 attempts) quick to fail.
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", url, "--concurrency", "4",
                 "--max-retries", "2")
    assert result.code == 3, result.output
    assert f"calls to {url} could not connect (connection refused); check --base-url" in result.output
    assert requests_made(result.output) <= 12  # a handful: 4 in flight, each retried once at most
    assert set(statuses(tmp_path / "run")) == {"pending"}  # never sent or stopped: not failed


def test_a_closed_port_stops_a_remote_job_run_too(tmp_path: Path) -> None:
    # fal's submits go through the job path (engine/jobs.py), not the call path: the watch must see them too.
    url = f"http://127.0.0.1:{closed_port()}"
    src = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS))
    result = cli("generate", src, "-o", tmp_path / "run", "--provider", "fal", "--model", "fal-ai/flux/schnell",
                 "--base-url", url, "--concurrency", "4", "--max-retries", "2", env={"FAL_KEY": "fal-test-key"})
    assert result.code == 3, result.output
    assert f"calls to {url} could not connect (connection refused); check --base-url" in result.output
    assert requests_made(result.output) <= 12
    assert set(statuses(tmp_path / "run")) == {"pending"}


def test_an_unknown_host_stops_with_the_host_named(tmp_path: Path) -> None:
    url = "http://nonexistent.invalid/v1"  # RFC 6761: never resolves
    src = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS))
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", url, "--concurrency", "4",
                 "--max-retries", "2")
    assert result.code == 3, result.output
    assert f"calls to {url} could not connect (host name not found); check the host name in --base-url" \
        in result.output
    assert requests_made(result.output) <= 12
    assert set(statuses(tmp_path / "run")) == {"pending"}


def test_https_to_a_plain_http_server_stops_with_the_scheme_named(server: ScriptedServer, tmp_path: Path) -> None:
    url = server.url.replace("http://", "https://") + "/v1"
    src = write_jsonl(tmp_path / "in.jsonl", prompts(ROWS))
    result = cli("generate", src, "-o", tmp_path / "run", "--base-url", url, "--concurrency", "4",
                 "--max-retries", "2")
    assert result.code == 3, result.output
    assert f"calls to {url} could not connect (TLS handshake failed); check --base-url (http or https?)" \
        in result.output
    assert requests_made(result.output) <= 12
    assert server.hits == []  # no request reached it
    assert set(statuses(tmp_path / "run")) == {"pending"}


GATEWAY_400 = Canned(400, {"error": {"message": "gateway: unknown tenant token", "type": "invalid_request_error"}})


def test_the_same_400_from_a_gateway_stops(server: ScriptedServer, tmp_path: Path) -> None:
    server.default = GATEWAY_400
    result = run_against(server, tmp_path, "run", "--concurrency", "2")
    assert result.code == 3, result.output
    assert (f"the first {REJECTED_CALLS} calls to {server.url}/v1 were all rejected the same way, with no answer "
            "before them (the configuration, not the rows)") in result.output
    assert "gateway: unknown tenant token" in result.output
    assert "check --base-url, the key and the model" in result.output
    assert len(server.hits) <= REJECTED_CALLS + 2  # the calls in flight at the stop, no more
    states = statuses(tmp_path / "run")
    assert states.count("failed") < REJECTED_CALLS  # the calls before the judgement failed; the rest wait
    assert states.count("pending") >= ROWS - REJECTED_CALLS


def test_a_wrong_path_404_stops(server: ScriptedServer, tmp_path: Path) -> None:
    result = run_against(server, tmp_path, "run", "--concurrency", "2", base="/gateway/v1")  # no such route
    assert result.code == 3, result.output
    assert f"calls to {server.url}/gateway/v1 were all rejected the same way" in result.output
    assert "HTTP 404" in result.output and "Check --base-url: the endpoint was not found there" in result.output
    assert len(server.hits) <= REJECTED_CALLS + 2


def fast_run(server: ScriptedServer, tmp_path: Path, name: str, rows: int = ROWS, **options: Any) -> Any:
    """A run through the Python API with fast retries (backoff of 10-50 ms)."""
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options

    src = write_jsonl(tmp_path / f"{name}.jsonl", prompts(rows, name))
    config = build_config("generate", src, job_options(
        output=tmp_path / name, base_url=server.url + "/v1", api_key=TEST_KEY,
        engine={"retry_base": 0.01, "retry_cap": 0.05}, **options))
    return config, run_config(config, env={})


def test_the_same_server_error_stops_once_rows_ran_out_of_retries(server: ScriptedServer, tmp_path: Path) -> None:
    """A 5xx is worth retrying: each row goes through its retries first, and the run stops once a few rows ran out
    of them on the same error with no answer at all."""
    server.default = Canned(502, b"<html>502 Bad Gateway: no upstream</html>", headers={"Content-Type": "text/html"})
    _, report = fast_run(server, tmp_path, "run", concurrency=2)
    assert report.exit_code == 3
    assert f"the first {SERVER_ROWS} rows sent to {server.url}/v1 each ran out of retries on the same server error" \
        in report.aborted
    assert "502 Bad Gateway: no upstream" in report.aborted
    assert len(server.hits) < ROWS  # a few rows' retries (6 attempts each), not every row's (240)
    states = statuses(tmp_path / "run")
    assert states.count("failed") < SERVER_ROWS and states.count("pending") > ROWS - SERVER_ROWS - 2


def test_a_refusal_of_every_row_does_not_stop(server: ScriptedServer, tmp_path: Path) -> None:
    """Refusals are about each row's content: every row is sent and fails on its own. The same 400 without the
    moderation code stops the run."""
    server.default = Canned(400, {"error": {"code": "moderation_blocked", "message": "Your request was rejected "
                                            "by the safety system", "type": "image_generation_user_error"}})
    refused = run_against(server, tmp_path, "refused", "--concurrency", "2")
    assert refused.code == 1, refused.output
    assert statuses(tmp_path / "refused") == ["failed"] * ROWS
    assert {r["pixelmill"]["error"]["kind"] for r in read_output(tmp_path / "refused")} == {"refused"}
    assert len(server.hits) == ROWS

    server.default = Canned(400, {"error": {"message": "Your request was rejected by the gateway"}})
    rejected = run_against(server, tmp_path, "rejected", "--concurrency", "2")
    assert rejected.code == 3, rejected.output


def test_a_rejection_naming_the_rows_prompt_does_not_stop(server: ScriptedServer, tmp_path: Path) -> None:
    """A 400 that names the prompt (OpenAI's `param`) is the row's: every row is sent."""
    server.default = Canned(400, {"error": {"message": "Invalid value for this request", "param": "prompt"}})
    about_rows = run_against(server, tmp_path, "about_rows", "--concurrency", "2")
    assert about_rows.code == 1, about_rows.output
    assert statuses(tmp_path / "about_rows") == ["failed"] * ROWS

    server.default = Canned(400, {"error": {"message": "Invalid value for this request", "param": "quality"}})
    about_config = run_against(server, tmp_path, "about_config", "--concurrency", "2")
    assert about_config.code == 3, about_config.output


def test_failures_after_answers_do_not_stop(server: ScriptedServer, tmp_path: Path) -> None:
    """Once a step has had answers, its URL, key and model work: a later run of identical failures is left to
    each row (failed, for --retry-failed), not judged systematic."""
    for i in range(3):
        server.script[f"later number {i}"] = Canned(body=openai_image())
    server.default = GATEWAY_400
    later = run_against(server, tmp_path, "later", "--concurrency", "1")
    assert later.code == 1, later.output
    assert statuses(tmp_path / "later") == ["done"] * 3 + ["failed"] * (ROWS - 3)

    first = run_against(server, tmp_path, "first", "--concurrency", "1")  # the same failures, first: stopped
    assert first.code == 3, first.output


def test_half_the_rows_bad_does_not_stop(server: ScriptedServer, tmp_path: Path) -> None:
    bad = Canned(400, {"error": {"message": "this row's request is not valid"}})
    for i in range(1, ROWS, 2):
        server.script[f"mix number {i}"] = bad
    mix = run_against(server, tmp_path, "mix", "--concurrency", "2")
    assert mix.code == 1, mix.output
    assert statuses(tmp_path / "mix") == ["done", "failed"] * (ROWS // 2)

    server.default = bad
    every = run_against(server, tmp_path, "every", "--concurrency", "2")
    assert every.code == 3, every.output


def test_mostly_429s_suggest_the_limit_flags(server: ScriptedServer, tmp_path: Path) -> None:
    """Most calls rate-limited: the run still ends done, and its summary says which flag paces it."""
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options
    from pixelmill.reports.progress import Progress

    calls = {"n": 0}

    def three_in_four(_key: str) -> Canned:
        calls["n"] += 1
        if calls["n"] % 4:
            return Canned(429, {"error": {"message": "Rate limit reached for images per minute"}},
                          headers={"Retry-After": "0"})
        return Canned(body=openai_image())

    server.default = three_in_four
    src = write_jsonl(tmp_path / "in.jsonl", prompts(12))
    config = build_config("generate", src, job_options(
        output=tmp_path / "run", base_url=server.url + "/v1", api_key=TEST_KEY,
        concurrency=2, engine={"retry_base": 0.01, "retry_cap": 0.05}))
    report = run_config(config, env={})
    assert report.exit_code == 0, report.aborted
    assert report.stats.rate_limited > report.stats.requests / 2

    stream = io.StringIO()
    progress = Progress(report.stats, config=config, stream=stream, tty=False)
    progress.summary(report, config)
    said = stream.getvalue()
    assert (f"rate limited: {report.stats.rate_limited} of {report.stats.requests} requests got 429: set --ipm "
            "(images a minute) or --rpm to the provider's limit") in said, said
    # The live line says it too, with the failures per kind and the latest reason.
    line = progress.line()
    assert "of the latest calls got 429: set --ipm" in line, line
    assert "failed attempts: " in line and " rate_limited; last: " in line and "Rate limit reached" in line, line
    from rich.console import Console

    console = Console(file=io.StringIO(), width=400, color_system=None)
    console.print(progress.renderable())
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "rate_limited; last: " in shown and "of the latest calls got 429: set --ipm" in shown, shown
