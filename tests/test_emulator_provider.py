"""`--provider emulator` is a registered provider: every model reference of a step (its model and its fallbacks)
may name it, and `estimate` and `run` take the same configuration the same way (nothing rewrites a config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runs import cli, prompts, read_output, write_jsonl


def _pipeline(tmp_path: Path, steps: str) -> Path:
    write_jsonl(tmp_path / "in.jsonl", prompts(3))
    path = tmp_path / "p.yaml"
    path.write_text(f"source: in.jsonl\noutput: out\nsteps:\n{steps}", encoding="utf-8")
    return path


def test_an_emulator_fallback_runs_as_estimate_said(tmp_path: Path) -> None:
    """The case of the layers issue: `estimate` passed and `run` failed with "unknown provider 'emulator'"."""
    path = _pipeline(tmp_path, """  - name: first
    model: {provider: emulator, model: gpt-image-2}
    fallback: [{provider: emulator, model: gpt-image-1.5}]
    prompt: "{prompt}"
""")
    estimate = cli("estimate", path)
    assert estimate.code == 0, estimate.output
    run = cli("run", path, "-q")
    assert run.code == 0, run.output
    rows = read_output(tmp_path / "out")
    assert [r["pixelmill"]["first"]["status"] for r in rows] == ["done"] * 3
    assert {r["pixelmill"]["first"]["provider"] for r in rows} == {"emulator"}


def test_gemini_models_on_the_emulator_speak_gemini(tmp_path: Path) -> None:
    """The emulator provider hands each model to the wire that serves it: a Gemini model chats (multi-turn rows
    are one conversation), an OpenAI model chains edits."""
    path = _pipeline(tmp_path, """  - name: first
    model: {provider: emulator, model: gemini-3.1-flash-image}
    prompt: "{prompt}"
  - name: second
    task: edit
    model: {provider: emulator, model: gpt-image-1.5}
    images: "{images}"
    prompt: "make it blue"
    output_field: edited
""")
    run = cli("run", path, "-q")
    assert run.code == 0, run.output
    rows = read_output(tmp_path / "out")
    assert all(r["pixelmill"]["second"]["status"] == "done" for r in rows)
    assert all(r["edited"] and r["images"] for r in rows)


BAD_PIPELINES = {
    "unknown provider in a fallback": """  - name: first
    model: {provider: emulator, model: gpt-image-2}
    fallback: [{provider: nowhere, model: gpt-image-1.5}]
""",
    "a model the step cannot use for its task": """  - name: first
    task: edit
    model: {provider: emulator, model: dall-e-3}
""",
    "a mask on a model that takes none": """  - name: first
    task: edit
    model: {provider: emulator, model: gemini-3.1-flash-image}
    mask: "{mask}"
""",
    "a size the model cannot make": """  - name: first
    model: {provider: emulator, model: dall-e-3}
    n: 3
""",
}
GOOD_PIPELINES = {
    "emulator then fallback": """  - name: first
    model: {provider: emulator, model: gpt-image-1-mini}
    fallback: [{provider: emulator, model: gemini-3.1-flash-image}]
""",
    "two steps on the emulator": """  - name: first
    model: {provider: emulator, model: gpt-image-2}
  - name: second
    task: edit
    model: {provider: emulator, model: gemini-3-pro-image}
    images: "{images}"
    prompt: "add a hat"
    output_field: hat
""",
}


@pytest.mark.parametrize("name", sorted(BAD_PIPELINES))
def test_estimate_and_run_refuse_the_same_pipelines(tmp_path: Path, name: str) -> None:
    path = _pipeline(tmp_path, BAD_PIPELINES[name])
    estimate, run = cli("estimate", path), cli("run", path, "-q")
    assert (estimate.code, run.code) == (2, 2), (estimate.output, run.output)
    assert not (tmp_path / "out" / "output.jsonl").exists()


@pytest.mark.parametrize("name", sorted(GOOD_PIPELINES))
def test_estimate_and_run_accept_the_same_pipelines(tmp_path: Path, name: str) -> None:
    path = _pipeline(tmp_path, GOOD_PIPELINES[name])
    estimate, run = cli("estimate", path), cli("run", path, "-q")
    assert (estimate.code, run.code) == (0, 0), (estimate.output, run.output)


def test_estimate_starts_no_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning builds the emulator provider without starting the emulator: estimate sends and serves nothing."""
    import pixelmill.testing

    started: list[object] = []
    monkeypatch.setattr(pixelmill.testing.Emulator, "run_in_thread", lambda self: started.append(self))
    path = _pipeline(tmp_path, GOOD_PIPELINES["two steps on the emulator"])
    assert cli("estimate", path).code == 0
    assert started == []
