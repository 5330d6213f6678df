"""Nothing a user or a row controls can write outside RUNDIR, or make two outputs share a file: ids, name
templates, output fields, step names, colliding ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelmill.testing import Emulator
from tests.runs import cli, read_output, write_jsonl


def gen(emu: Emulator, src: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = cli("generate", src, "-o", out, "--base-url", emu.openai_base_url, "--quiet", *extra)
    return result.code, result.output


def files_outside(root: Path, rundir: Path, src: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(rundir) and p != src]


@pytest.mark.parametrize("template", [
    "../{key}_{i}",
    "/tmp/{key}_{i}",
    "{key}/../../{i}",
    "{step}/../../../{key}_{i}",
    "..\\{key}_{i}",
    "{key.__class__}_{i}",
    "{key[0]}_{i}",
    "{key!r}_{i}",
    "{key:>300}_{i}",
    "{i}",  # rows would share files
    "{key}",  # images of a row would share files
    "{secret}_{key}_{i}",
])
def test_hostile_name_templates_are_refused_before_sending(emulator_thread: Emulator, tmp_path: Path,
                                                           template: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    code, text = gen(emulator_thread, src, tmp_path / "run", "--name-template", template)
    assert code == 2, text
    assert "name template" in text or "template" in text
    assert emulator_thread.count() == 0
    assert files_outside(tmp_path, tmp_path / "run", src) == []


@pytest.mark.parametrize("template", ["{key}_{i}", "x/{row}/{key}-{i}", "..{key}.{i}", "{field}/{step}/{key}_{i}"])
def test_accepted_templates_with_hostile_ids_stay_inside(emulator_thread: Emulator, tmp_path: Path,
                                                         template: str) -> None:
    ids = ["../../a", "/etc/x", "..", "b/../../c", "d\\..\\e"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": v, "prompt": f"p{i}"} for i, v in enumerate(ids)])
    run = tmp_path / "run"
    code, text = gen(emulator_thread, src, run, "--id-field", "id", "--name-template", template)
    assert code == 0, text
    paths = [r["images"][0] for r in read_output(run)]
    assert len(set(paths)) == len(ids)
    for path in paths:
        assert (run / path).resolve().is_relative_to((run / "images").resolve())
    assert files_outside(tmp_path, run, src) == []


def test_output_field_cannot_lead_outside_rundir(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    run = tmp_path / "deep" / "run"  # an escape lands in tmp_path/deep, still inside the test's own folder
    code, _ = gen(emulator_thread, src, run, "--output-field", "../../escaped", "--name-template",
                  "{field}/{key}_{i}")
    if code == 0:
        [row] = read_output(run)
        [path] = row["../../escaped"]
        assert (run / path).resolve().is_relative_to(run.resolve())
    else:
        assert code == 2 and emulator_thread.count() == 0
    assert files_outside(tmp_path, run, src) == []


def test_two_steps_never_share_a_file(emulator_thread: Emulator, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a cat"}, {"prompt": "a dog"}])
    model = f'{{provider: openai, model: gpt-image-2, base_url: "{emulator_thread.openai_base_url}"}}'
    (tmp_path / "pipeline.yaml").write_text(f"""
source: in.jsonl
output: out
steps:
  - name: red
    model: {model}
    prompt: "{{prompt}}, in red"
    output_field: red
    name_template: "{{key}}_{{i}}"
  - name: blue
    model: {model}
    prompt: "{{prompt}}, in blue"
    output_field: blue
    name_template: "{{key}}_{{i}}"
""")
    result = cli("run", tmp_path / "pipeline.yaml", "--quiet")
    if result.code == 2:  # refused before sending, naming the clash: fine
        assert "name" in result.output and emulator_thread.count() == 0
        return
    assert result.code == 0, result.output
    rows = read_output(tmp_path / "out")
    files = [p for r in rows for p in r["red"] + r["blue"]]
    assert len(set(files)) == len(files) == 4


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "x" * 65, "a\\b"])
def test_hostile_step_names_are_refused(tmp_path: Path, name: str) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    (tmp_path / "pipeline.yaml").write_text(
        f'source: in.jsonl\noutput: out\nsteps:\n  - name: "{name}"\n    prompt: "{{prompt}}"\n'.replace("\\", "\\\\"))
    result = cli("run", tmp_path / "pipeline.yaml", "--quiet")
    assert result.code == 2, result.output
    assert not (tmp_path / "out" / "images").exists()


def test_colliding_ids_and_their_fallbacks_get_distinct_files(emulator_thread: Emulator, tmp_path: Path) -> None:
    """Ids that collide, and ids that look like the `<key>-<row>` fallback of a collision, still get a file each;
    a resume names them the same way and sends nothing."""
    ids = ["a-2", "a", "a", "a-1", "a/1", "a-1-3"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": v, "prompt": f"p{i}"} for i, v in enumerate(ids)])
    code, text = gen(emulator_thread, src, tmp_path / "run", "--id-field", "id")
    assert code == 0, text
    paths = [r["images"][0] for r in read_output(tmp_path / "run")]
    assert len(set(paths)) == len(ids)
    assert gen(emulator_thread, src, tmp_path / "run", "--id-field", "id")[0] == 0
    assert [r["images"][0] for r in read_output(tmp_path / "run")] == paths
    assert emulator_thread.count(endpoint="generations") == len(ids)
