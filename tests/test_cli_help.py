"""The command line as a user first meets it: `--help` (defaults shown, options in panels, a help line each,
`estimate` offering only what it uses), `--version`, `-m`, and `pixelmill models` read on a terminal, piped into
grep, or as JSON. Run as a user would: a real process with COLUMNS set, or typer's runner for the walks over
every command."""

from __future__ import annotations

import inspect
import os
import pty
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from pixelmill import defaults
from pixelmill.cli import app
from pixelmill.config import RunConfig
from pixelmill.models.table import builtin_table
from pixelmill.options import PANELS
from pixelmill.version import VERSION
from tests.runs import write_jsonl

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RUN_COMMANDS = ("generate", "edit", "run", "estimate")


def pixelmill(*args: str, columns: int = 80, shell_tail: str = "") -> subprocess.CompletedProcess[str]:
    """`pixelmill ARGS [| tail]` in a real process, stdout a pipe, at a terminal width of `columns`."""
    env = {**os.environ, "COLUMNS": str(columns)}
    command = [sys.executable, "-m", "pixelmill", *args]
    if shell_tail:
        import shlex

        return subprocess.run(f"{shlex.join(command)} | {shell_tail}", shell=True, env=env, capture_output=True,
                              text=True, timeout=120)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def help_text(*command: str, columns: int = 80) -> str:
    """`pixelmill COMMAND --help` at `columns`, with the panels' borders removed and every run of whitespace made
    one space: a help text wrapped over several lines of its cell reads whole again."""
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def click_commands() -> dict[str, Any]:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return dict(group.commands)


def declared_helps(name: str) -> dict[str, str]:
    """The help of each parameter of command `name` as its code declares it (the typer metadata of the
    command function's signature), before any rendering."""
    command = next(c for c in app.registered_commands if (c.name or getattr(c.callback, "__name__", "")) == name)
    callback: Any = command.callback
    hints = typing.get_type_hints(callback, include_extras=True)  # functions written with `def` (string hints)
    helps = {}
    for param in inspect.signature(callback).parameters.values():
        annotation = hints.get(param.name, param.annotation)
        for info in typing.get_args(annotation)[1:]:
            if isinstance(info, typer.models.ParameterInfo) and info.help:
                helps[param.name] = info.help
    return helps


# ---------------------------------------------------------------- --help
def test_every_option_of_every_command_has_a_help_line() -> None:
    for name, command in click_commands().items():
        for param in command.params:
            assert (getattr(param, "help", None) or "").strip(), f"pixelmill {name}: {param.name} has no help"


@pytest.mark.parametrize("name", sorted(click_commands()))
def test_every_help_text_is_shown_whole(name: str) -> None:
    """Brackets in a help text used to be read as rich markup and vanish ("Run directory ."): every declared
    help, `[default: ...]` included, is on the screen as written."""
    shown = help_text(name)
    helps = declared_helps(name)
    assert helps
    for param, text in helps.items():
        assert " ".join(text.split()) in shown, f"pixelmill {name} --help: {param}'s help {text!r} not shown"


def test_help_shows_the_defaults() -> None:
    generate = help_text("generate")
    for expected in (f"Requests in flight. [default: {defaults.CONCURRENCY}]",
                     f"Run directory [default: {defaults.OUTPUT_ROOT}/<input stem>]",
                     "Field holding the prompt [default: prompt, else conversations]",
                     "[default: jsonl]", f"[default: {defaults.DEFAULT_PROVIDER}]",
                     f"[default: {defaults.MAX_RETRIES}]", f"[default: {defaults.MODEL} for openai"):
        assert expected in generate
    assert f"Requests in flight [default: the file's, else {defaults.CONCURRENCY}]" in help_text("run")
    assert "The page [default: RUNDIR/gallery.html]" in help_text("gallery")
    assert "[default: 8765]" in help_text("emulate")


def test_a_real_help_at_80_columns_shows_defaults_and_panels() -> None:
    result = pixelmill("generate", "--help", columns=80)
    assert result.returncode == 0
    out = ANSI.sub("", result.stdout)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert re.search(r"--concurrency .*\[default: 16\]", out)
    for panel in PANELS:
        assert f"╭─ {panel} ─" in out


def test_options_are_grouped_in_panels_on_every_run_command() -> None:
    for name in RUN_COMMANDS:
        options = [p for p in click_commands()[name].params if isinstance(p, TyperOption) and p.name != "help"]
        assert len(options) > 10
        for param in options:
            assert param.rich_help_panel in PANELS, f"pixelmill {name}: {param.name}"
        shown = help_text(name)
        # In the order a user thinks of them: what goes in, what is asked, within what limits, what comes out.
        positions = [shown.index(f" {panel} ") for panel in PANELS]
        assert positions == sorted(positions), name
    assert "--concurrency" in help_text("generate").split(" Limits and spend ")[1].split(" Output ")[0]


def test_estimate_offers_only_what_it_reads() -> None:
    shown = help_text("estimate")
    for flag in ("--limit", "--model", "--prompt-field", "--max-cost", "--retry-failed", "--restart", "--output",
                 "--json", "--task", "--models-file"):
        assert flag in shown
    run_only = ("--concurrency", "--rpm", "--ipm", "--max-retries", "--max-billed-retries", "--timeout",
                "--deadline", "--format", "--verify-images", "--report-broken", "--embed-images",
                "--allow-private-urls", "--allow-path", "--api-key", "--batch-size", "--devices", "--quiet")
    for flag in run_only:
        assert f"{flag} " not in shown, flag
    generate = help_text("generate")
    for flag in run_only:
        assert flag in generate, flag


def test_estimate_refuses_a_run_only_flag(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a cat"}])
    result = CliRunner().invoke(app, ["estimate", str(source), "--concurrency", "4"], catch_exceptions=False)
    assert result.exit_code == 2 and "--concurrency" in result.output


def test_format_help_lists_every_output_format() -> None:
    assert typing.get_args(RunConfig.model_fields["format"].annotation) == defaults.OUTPUT_FORMATS
    listed = f"{', '.join(defaults.OUTPUT_FORMATS[:-1])} or {defaults.OUTPUT_FORMATS[-1]}"
    assert listed == "jsonl, parquet or hf"
    for name in ("generate", "edit", "run"):
        assert f"Output format: {listed}" in help_text(name), name


def test_switches_are_plain_flags() -> None:
    shown = help_text("generate")
    assert "--restart" in shown and "--no-restart" not in shown and "--no-retry-failed" not in shown


# ---------------------------------------------------------------- --version and -m
def test_version() -> None:
    result = pixelmill("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"pixelmill {VERSION}\n", "")
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)


def test_model_has_short_flag_m_and_no_short_flag_clashes(tmp_path: Path) -> None:
    for name, command in click_commands().items():
        shorts = [opt for param in command.params for opt in (*param.opts, *param.secondary_opts)
                  if re.fullmatch(r"-[A-Za-z]", opt)]
        assert len(shorts) == len(set(shorts)), f"pixelmill {name}: {shorts}"
        if name in ("generate", "edit", "estimate"):
            model = next(p for p in command.params if p.name == "model")
            assert "-m" in model.opts, name
    source = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a cat"}])
    result = pixelmill("estimate", str(source), "-m", "gpt-image-1-mini", "--json")
    assert result.returncode == 0, result.stderr
    assert [step["model"] for step in orjson.loads(result.stdout)["steps"]] == ["gpt-image-1-mini"]


# ---------------------------------------------------------------- pixelmill models
def model_names() -> list[str]:
    return list(builtin_table().specs)


def test_models_piped_is_one_tab_separated_line_per_model() -> None:
    result = pixelmill("models", columns=40)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    assert header[0] == "model" and all(len(row) == len(header) for row in rows)
    assert [row[0] for row in rows] == model_names()
    for row, spec in zip(rows, builtin_table().specs.values(), strict=True):
        assert row[header.index("aliases")] == (", ".join(spec.aliases) or "-")


def test_models_grep_finds_every_model_by_its_full_name() -> None:
    result = pixelmill("models", columns=40, shell_tail="grep gemini")
    assert result.returncode == 0, result.stderr
    found = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert found == [name for name in model_names() if "gemini" in name] and len(found) >= 2
    piped = pixelmill("models", columns=40).stdout.splitlines()
    for name in model_names():  # what `grep -F NAME` keeps holds the model's line, its name whole
        assert any(line.startswith(name + "\t") for line in piped if name in line), name


def _on_a_terminal(*args: str, columns: int) -> str:
    """`pixelmill ARGS` with stdout a pseudo-terminal `columns` wide: what a user's terminal shows."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "pixelmill", *args], stdout=follower, stderr=subprocess.PIPE,
                            env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes with the process (EIO)
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_models_on_a_terminal_never_cut_a_name(columns: int) -> None:
    shown = _on_a_terminal("models", columns=columns)
    lines = shown.splitlines()
    names = set(model_names())
    # Only a model name longer than the terminal may pass its width: on a line of its own, whole.
    assert all(len(line) <= columns or line.strip() in names for line in lines)
    for name in model_names():
        assert any(re.search(rf"(^|[\s│┃]){re.escape(name)}($|[\s│┃])", line) for line in lines), (name, shown)
    assert "…" not in shown
    if columns == 200:
        assert "┃ model" in shown  # wide enough for the table


def test_models_json_lists_every_model() -> None:
    result = pixelmill("models", "--json")
    assert result.returncode == 0, result.stderr
    models: list[dict[str, Any]] = orjson.loads(result.stdout)
    assert [m["name"] for m in models] == model_names()
    table = builtin_table()
    for model in models:
        spec = table.specs[model["name"]]
        assert model["family"] == spec.family and model["tasks"] == list(spec.tasks)
        assert model["aliases"] == list(spec.aliases) and model["replacement"] == spec.replacement
        assert model["shutdown"] == (spec.shutdown.isoformat() if spec.shutdown else None)
        assert model["price"] == spec.price.model_dump(exclude_none=True)
        assert model["status"] in ("current", "deprecated", "retired")
    by_name = {m["name"]: m for m in models}
    for provider, presets in table.presets.items():
        for preset, name in presets.items():
            assert f"{provider}:{preset}" in by_name[name]["presets"]
    gemini = orjson.loads(pixelmill("models", "--json", "--provider", "gemini").stdout)
    assert {m["family"] for m in gemini} == {"gemini"} and len(gemini) == sum(
        s.family == "gemini" for s in table.specs.values())


def test_models_unknown_provider_is_a_usage_error() -> None:
    result = pixelmill("models", "--provider", "nosuch")
    assert result.returncode == 2
    assert result.stderr == ("pixelmill: error: --provider 'nosuch': the model table has no models of it; use azure, "
                             "bfl, diffusers, fal, gemini, hf, hf-endpoint, openai or replicate\n")
