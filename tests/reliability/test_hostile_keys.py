"""A server that reflects the caller's credentials everywhere it can (request ids, revised prompts, model text,
metadata, usage, finish messages, error messages with the key just before the 400-character cut), and a base
URL that carries a password: neither ever reaches output.jsonl, the journal, `status` or the gallery. Checked
for the secret and every 8-character piece of it, with keys shaped like no known key pattern (only pixelmill's
knowledge of its secrets can hide them)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pixelmill.errors import redact_clip
from tests.reliability.hostile_answers import PNG_B64, Canned, ScriptedServer, openai_image
from tests.runs import cli, read_output, write_jsonl

OPENAI_KEY = "Zq4Wm9Xk2Pv7Ld3Ns8Rt6Hy1"
GEMINI_KEY = "Gk5Tp8Vm2Qx7Zr3Lw9Nc4Hd6"
PASSWORD = "Pw7Hx3Kq9Zm2Vb5Jc"


def pieces(secret: str, width: int = 8) -> list[str]:
    return [secret[i:i + width] for i in range(len(secret) - width + 1)]


def assert_nowhere(secret: str, run: Path, shown: list[str]) -> None:
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name.startswith("journal.sqlite") for p in files)
    for piece in pieces(secret):
        for path in files:
            assert piece.encode() not in path.read_bytes(), f"{piece!r} of the secret is in {path}"
        for text in shown:
            assert piece not in text, f"{piece!r} of the secret is shown: {text[-3000:]}"


def shown_after(run: Path) -> list[str]:
    outputs = []
    for command in (["status", run], ["status", run, "--json"], ["gallery", run]):
        result = cli(*command, env={"OPENAI_API_KEY": ""})
        assert result.code == 0, result.output
        outputs.append(result.output)
    return outputs


def late(secret: str, at: int) -> str:
    """A message with `secret` starting at character `at`, past any cut."""
    return "x" * at + secret + " and then some more words"


def reflect_openai(key: str) -> Canned:
    body = openai_image(quality=f"high-{key}", usage={"note": key, "output_tokens": 10})
    body["data"][0]["revised_prompt"] = f"a teapot, made by {key}"
    return Canned(200, body, {"x-request-id": f"req-{key}"})


def reflect_gemini(key: str) -> Canned:
    return Canned(200, {
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": f"Here is your image, {key}"},
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]},
            "finishReason": "STOP", "finishMessage": f"done for {key}"}],
        "responseId": f"resp-{key}", "modelVersion": f"v-{key}", "usageMetadata": {"note": key}})


def test_openai_reflections_are_redacted(server: ScriptedServer, tmp_path: Path) -> None:
    server.script = {
        "reflect": reflect_openai,
        "late-400": lambda key: Canned(400, {"error": {"message": late(key, 380), "code": f"c-{key}"}},
                                       {"x-request-id": f"req-{key}"}),
        "late-500": lambda key: Canned(500, late(key, 380).encode(), {"Content-Type": "text/plain"}),
        "late-429": lambda key: Canned(429, {"error": {"message": late(key, 395)}}, {"Retry-After": "0"}),
    }
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in server.script])
    run = tmp_path / "run"
    result = cli("generate", src, "-o", run, "--base-url", server.url + "/v1", "--max-retries", "0",
                 "--deadline", "1", env={"OPENAI_API_KEY": OPENAI_KEY})
    assert result.code == 1, result.output
    rows = read_output(run)
    assert rows[0]["images"] and rows[0]["pixelmill"]["revised_prompt"].startswith("a teapot, made by ")
    assert [bool(row["images"]) for row in rows] == [True, False, False, False]
    assert_nowhere(OPENAI_KEY, run, [result.output, *shown_after(run)])


def test_gemini_reflections_are_redacted(server: ScriptedServer, tmp_path: Path) -> None:
    server.script = {
        "reflect": reflect_gemini,
        "late-refusal": lambda key: Canned(200, {"candidates": [{"finishReason": "OTHER",
                                                                 "finishMessage": late(key, 290)}]}),
        "late-text": lambda key: Canned(200, {"candidates": [{"content": {"parts": [{"text": late(key, 295)}]},
                                                              "finishReason": "STOP"}]}),
        "late-400": lambda key: Canned(400, {"error": {"message": late(key, 390), "status": f"S-{key}"}}),
    }
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in server.script])
    run = tmp_path / "run"
    result = cli("generate", src, "-o", run, "--provider", "gemini", "--base-url", server.url,
                 "--max-retries", "0", env={"GEMINI_API_KEY": GEMINI_KEY})
    assert result.code == 1, result.output
    rows = read_output(run)
    assert [bool(row["images"]) for row in rows] == [True, False, False, False]
    assert rows[0]["pixelmill"]["text"].startswith("Here is your image, ")
    assert_nowhere(GEMINI_KEY, run, [result.output, *shown_after(run)])


def test_a_password_in_the_base_url_is_a_secret(server: ScriptedServer, tmp_path: Path) -> None:
    """`http://user:PASSWORD@host`: sent (as basic auth), never stored or shown, nor reflected back."""
    server.default = lambda _key: reflect_gemini(server.passwords[-1])
    # A server error (one a retry can fix, so that the summary shows the command that retries it).
    server.script["refused"] = lambda _key: Canned(500, {"error": {"message": f"no, {server.passwords[-1]}"}})
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "reflect the password"}, {"prompt": "refused"}])
    run = tmp_path / "run"
    base = server.url.replace("http://", f"http://gateway-user:{PASSWORD}@")
    result = cli("generate", src, "-o", run, "--provider", "gemini", "--base-url", base, "--max-retries", "0",
                 env={"GEMINI_API_KEY": GEMINI_KEY})
    assert result.code == 1, result.output
    assert server.passwords == [PASSWORD, PASSWORD]  # the password did go to the server, as basic auth
    shown = shown_after(run)
    # The command that retries the failed row is shown, with the base URL but without its credentials.
    assert f"--base-url {server.url}" in result.output + shown[0], result.output + shown[0]
    assert_nowhere(PASSWORD, run, [result.output, *shown])


@settings(max_examples=400, deadline=None)
@given(before=st.integers(0, 5000), spaces=st.integers(0, 4000), after=st.integers(0, 3000),
       limit=st.sampled_from([300, 400]))
@example(before=380, spaces=0, after=10, limit=400)  # the key just before the cut
@example(before=0, spaces=1410, after=10, limit=400)  # a key cut by the redacted prefix, pulled in by collapsing
def test_no_piece_of_a_key_survives_the_cut(before: int, spaces: int, after: int, limit: int) -> None:
    """Wherever the key lies, behind whatever run of text and spaces, the cut message holds no piece of it."""
    text = "w" * before + " " * spaces + OPENAI_KEY + " tail" * after
    clipped = redact_clip(text, limit, (OPENAI_KEY,))
    assert len(clipped) <= limit
    for piece in pieces(OPENAI_KEY):
        assert piece not in clipped, (before, spaces, after)
