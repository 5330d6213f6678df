"""An API key never appears in a file, a log line, an exception message, the terminal or the gallery, even when
the server hands it back in every error (a leaky gateway). Checked by searching every byte written for the key
and for every 10-character piece of it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixelmill.testing import ThreadRunner
from tests.reliability.hostile_servers import LeakyGateway
from tests.runs import cli, write_jsonl

# Shaped like no known key pattern, so that only pixelmill's knowledge of the key (not a regex) can hide it.
OPENAI_KEY = "pm-live-Qx7Zk2Vb9Lr4Tn8Wc3Hs5Jd"
GEMINI_KEY = "gk-prod-Ry6Xm1Ua8Kq3Sp7Vd2Gt4Fw"

ROWS = [
    {"id": "fine", "prompt": "a harmless teapot"},
    {"id": "bad-request", "prompt": "a teapot [echo:400]"},
    {"id": "server-error", "prompt": "a teapot [echo:500]"},
    {"id": "broken-body", "prompt": "a teapot [echo:malformed]"},
    {"id": "fine-too", "prompt": "another harmless teapot"},
    {"id": "key-refused", "prompt": "a teapot [echo:401]"},  # last: it stops the run
    {"id": "never-sent", "prompt": "a teapot not sent"},
]


@pytest.fixture
def gateway() -> Iterator[LeakyGateway]:
    server = LeakyGateway()
    runner = ThreadRunner(server)  # type: ignore[arg-type]
    runner.start()
    yield server
    runner.stop()


def pieces(key: str, width: int = 10) -> list[str]:
    return [key[i:i + width] for i in range(len(key) - width + 1)]


def assert_no_key(text: str | bytes, key: str, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for piece in pieces(key):
        assert piece.encode() not in data, f"a piece of the key ({piece!r}) is in {where}"


def assert_no_key_in_files(root: Path, key: str) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert_no_key(path.read_bytes(), key, str(path))
    return len(files)


@pytest.mark.parametrize("family", ["openai", "gemini"])
@pytest.mark.parametrize("key_from", ["env", "flag"])
def test_key_in_no_file_terminal_status_or_gallery(gateway: LeakyGateway, tmp_path: Path, family: str,
                                                    key_from: str) -> None:
    key = OPENAI_KEY if family == "openai" else GEMINI_KEY
    variable = "OPENAI_API_KEY" if family == "openai" else "GEMINI_API_KEY"
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    run = tmp_path / "run"
    base = gateway.url + ("/v1" if family == "openai" else "")
    flags = ["--api-key", key] if key_from == "flag" else []
    env = {variable: key} if key_from == "env" else {}
    result = cli("generate", src, "-o", run, "--provider", family, "--base-url", base, "--concurrency", "1",
                 "--max-retries", "0", "--id-field", "id", *flags, env={"OPENAI_API_KEY": "", **env})
    assert result.code == 3, result.output  # the 401/403 stopped the run
    assert "key" in result.output.lower()
    outputs = [result.output]
    for command in (["status", run], ["status", run, "--json"], ["gallery", run]):
        shown = cli(*command, env={variable: key})
        assert shown.code == 0, shown.output
        outputs.append(shown.output)
    for text in outputs:
        assert_no_key(text, key, "the terminal")
    assert (run / "gallery.html").is_file()
    assert assert_no_key_in_files(tmp_path, key) >= 5
    # The leaky answers did reach the rows: their errors are recorded, with the key scrubbed.
    journal_text = (run / "output.jsonl").read_text()
    assert journal_text.count('"failed"') == 3 and "***" in journal_text


def test_key_in_no_log_record_or_exception(gateway: LeakyGateway, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """In-process: every log record at DEBUG and every message the API hands back are free of the key."""
    from pixelmill.api import run_config
    from pixelmill.options import build_config, job_options

    caplog.set_level(logging.DEBUG)
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    notices: list[str] = []
    config = build_config("generate", src, job_options(
        output=tmp_path / "run", base_url=gateway.url + "/v1", api_key=OPENAI_KEY, concurrency=1, max_retries=1,
        engine={"retry_base": 0.01, "retry_cap": 0.02}))
    assert OPENAI_KEY not in repr(config) and OPENAI_KEY not in str(config.snapshot())
    report = run_config(config, env={}, notice=notices.append)
    assert report.abort_kind == "auth"
    assert_no_key(report.aborted or "", OPENAI_KEY, "the abort message")
    for line in notices:
        assert_no_key(line, OPENAI_KEY, "a notice")
    for record in caplog.records:
        assert_no_key(record.getMessage(), OPENAI_KEY, f"log record of {record.name}")
        if record.exc_text:
            assert_no_key(record.exc_text, OPENAI_KEY, f"logged exception of {record.name}")
    assert_no_key_in_files(tmp_path, OPENAI_KEY)
