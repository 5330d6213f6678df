"""A fingerprint per step: a change to one step makes that step and the steps reading its outputs again, never
the steps before it or independent ones; the refusal names the narrowest way on (`--restart-step NAME`);
`--restart` says what it discards; a RUNDIR whose run paid for nothing is simply reconfigured; old journals (one
whole-configuration fingerprint) are adopted; the summary suggests `--retry-failed` only for failures a retry can
fix. Driven through the command line against the emulator, as a user would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, cli, prompts, read_output, write_jsonl

PRODUCTS = [
    {"sku": "A1", "product_name": "Lamp", "product_description": "brass, green shade"},
    {"sku": "B2", "product_name": "Mug", "product_description": "matte ceramic"},
    {"sku": "C3", "product_name": "Chair", "product_description": "walnut"},
]
ENV = {"OPENAI_API_KEY": TEST_KEY, "GEMINI_API_KEY": "gemini-test-key-123456"}
PIPELINE = """
source: products.jsonl
output: out
id_field: sku
models:
  fast: {provider: openai, model: gpt-image-2, base_url: OPENAI_URL, quality: low}
  banana: {provider: gemini, model: gemini-3-pro-image, base_url: GEMINI_URL}
steps:
  - name: product_image
    model: fast
    prompt: "A professional product photo of {product_name}: {product_description}."
    output_field: product_image
  - name: on_marble
    task: edit
    model: banana
    images: "{product_image}"
    prompt: "Put this product on a marbel table."
    output_field: marble_image
  - name: poster
    model: fast
    prompt: "A poster of {product_name}."
    output_field: poster_image
"""
FIXED = ("marbel", "marble")


def write_pipeline(tmp_path: Path, emu: Emulator, body: str = PIPELINE) -> Path:
    write_jsonl(tmp_path / "products.jsonl", PRODUCTS)
    path = tmp_path / "pipe.yaml"
    path.write_text(body.replace("OPENAI_URL", emu.openai_base_url).replace("GEMINI_URL", emu.gemini_base_url))
    return path


def edit_pipeline(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def requests_of(emu: Emulator) -> dict[str, int]:
    """Requests the emulator received per step of PIPELINE (told apart by endpoint and prompt)."""
    generations = [r.prompt or "" for r in emu.records(endpoint="generations")]
    return {
        "product_image": sum(p.startswith("A professional product photo") for p in generations),
        "on_marble": emu.count(endpoint="generateContent"),
        "poster": sum(p.startswith("A poster") for p in generations),
    }


def files(rundir: Path, step: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((rundir / "images" / step).iterdir())}


def test_fixing_step_two_re_runs_it_without_a_single_step_one_request(emulator_thread: Emulator,
                                                                      tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, emulator_thread)
    out = tmp_path / "out"
    first = cli("run", path, "--quiet", env=ENV)
    assert first.code == 0, first.output
    assert requests_of(emulator_thread) == {"product_image": 3, "on_marble": 3, "poster": 3}
    step_one, posters, marble = files(out, "product_image"), files(out, "poster"), files(out, "on_marble")

    edit_pipeline(path, *FIXED)  # the typo in step 2's prompt, fixed
    emulator_thread.reset_log()
    refused = cli("run", path, "--quiet", env=ENV)
    assert refused.code == 2, refused.output
    assert "another configuration" in refused.output
    assert "steps.on_marble.prompt: 'Put this product on a marbel table.' -> 'Put this product on a marble table.'" \
        in refused.output
    assert "To redo only what changed: --restart-step on_marble (discards the 3 paid rows of on_marble" \
        in refused.output
    assert "keeps product_image's 3 done rows, poster's 3 done rows" in refused.output
    assert "--restart to discard all 9 paid rows of 3 steps ($" in refused.output
    assert "--restart-step product_image" not in refused.output and "--restart-step poster" not in refused.output
    assert emulator_thread.count() == 0  # refused before anything was sent

    again = cli("run", path, "--quiet", "--restart-step", "on_marble", env=ENV)
    assert again.code == 0, again.output
    assert requests_of(emulator_thread) == {"product_image": 0, "on_marble": 3, "poster": 0}
    assert all("marble table" in str(r.prompt) for r in emulator_thread.records(endpoint="generateContent"))
    assert "--restart-step: discarded 3 paid rows of on_marble ($" in again.output
    assert "kept: product_image's 3 done rows, poster's 3 done rows" in again.output
    assert files(out, "product_image") == step_one and files(out, "poster") == posters  # kept as they were
    remade = files(out, "on_marble")
    assert remade.keys() == marble.keys() and all(remade[k] != marble[k] for k in marble)  # the new prompt's
    rows = read_output(out)
    assert all(r["pixelmill"][s]["status"] == "done" for r in rows for s in ("product_image", "on_marble", "poster"))

    emulator_thread.reset_log()  # and from now on the fixed pipeline simply resumes
    resumed = cli("run", path, "--quiet", "--concurrency", "2", "--max-retries", "5", env=ENV)
    assert resumed.code == 0, resumed.output
    assert emulator_thread.count() == 0


def test_changing_step_one_redoes_its_readers_and_keeps_independent_steps(emulator_thread: Emulator,
                                                                          tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, emulator_thread)
    assert cli("run", path, "--quiet", env=ENV).code == 0
    posters = files(tmp_path / "out", "poster")
    edit_pipeline(path, "{product_name}: {product_description}.", "{product_name}, {product_description}.")
    emulator_thread.reset_log()
    refused = cli("run", path, "--quiet", env=ENV)
    assert refused.code == 2, refused.output
    # Step 2 reads step 1's images: the one flag covers both, and the independent poster step keeps its rows.
    assert "--restart-step product_image (discards the 6 paid rows of product_image, on_marble" in refused.output
    assert "keeps poster's 3 done rows" in refused.output and "--restart-step on_marble" not in refused.output
    # Naming only the step after it is not enough: step 1's change would be kept out of sight.
    narrow = cli("run", path, "--quiet", "--restart-step", "on_marble", env=ENV)
    assert narrow.code == 2 and "--restart-step product_image" in narrow.output
    assert emulator_thread.count() == 0

    again = cli("run", path, "--quiet", "--restart-step", "product_image", env=ENV)
    assert again.code == 0, again.output
    assert requests_of(emulator_thread) == {"product_image": 3, "on_marble": 3, "poster": 0}
    assert files(tmp_path / "out", "poster") == posters


def test_restart_says_how_many_paid_rows_it_discards(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, emulator_thread)
    assert cli("run", path, "--quiet", env=ENV).code == 0
    emulator_thread.reset_log()
    again = cli("run", path, "--quiet", "--restart", env=ENV)
    assert again.code == 0, again.output
    assert "--restart: discarded the earlier run: 9 paid rows of 3 steps ($" in again.output
    assert emulator_thread.count() == 9


def test_images_of_a_discarded_step_are_removed(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, emulator_thread)
    assert cli("run", path, "--quiet", env=ENV).code == 0
    old = set(files(tmp_path / "out", "on_marble"))
    assert old == {"A1_0.png", "B2_0.png", "C3_0.png"}
    edit_pipeline(path, "    output_field: marble_image", "    output_field: marble_image\n"
                                                        "    name_template: \"{step}/{key}_v2_{i}\"")
    again = cli("run", path, "--quiet", "--restart-step", "on_marble", env=ENV)
    assert again.code == 0, again.output
    # The old configuration's files are gone: the folder holds only what the output names.
    assert set(files(tmp_path / "out", "on_marble")) == {"A1_v2_0.png", "B2_v2_0.png", "C3_v2_0.png"}
    assert [r["marble_image"] for r in read_output(tmp_path / "out")] == [
        [f"images/on_marble/{sku}_v2_0.png"] for sku in ("A1", "B2", "C3")]


def test_a_rundir_that_paid_for_nothing_is_reconfigured_without_a_flag(emulator_thread: Emulator,
                                                                       tmp_path: Path) -> None:
    # The wrong field, blank in every row: every row fails on its input and nothing is sent.
    src = write_jsonl(tmp_path / "in.jsonl", [{"title": "", "description": f"a red fox {i}"} for i in range(3)])
    args = ["generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url]
    typo = cli(*args, "--prompt-field", "title")
    assert typo.code == 1, typo.output
    assert emulator_thread.count() == 0
    assert "input errors in 3 row-steps: a retry reads the same input" in typo.output
    assert "--retry-failed" not in typo.output
    fixed = cli(*args, "--prompt-field", "description", "--quiet")
    assert fixed.code == 0, fixed.output
    assert ("the configuration changed (steps.generate.prompt_field: 'title' -> 'description'); nothing of "
            "generate had been paid for: it runs with the new one") in fixed.output
    assert emulator_thread.count() == 3
    # Once rows are paid for, a change is refused, and the message says what --restart would discard.
    refused = cli(*args, "--prompt-field", "description", "--quality", "high", "--quiet")
    assert refused.code == 2
    assert "params.quality: None -> 'high'" in refused.output
    assert "or --restart to discard all 3 paid rows ($" in refused.output
    # One step: --restart-step takes its name as well.
    assert cli(*args, "--prompt-field", "description", "--quality", "high", "--quiet", "--restart-step",
               "generate").code == 0
    assert emulator_thread.count() == 6
    unknown = cli(*args, "--prompt-field", "description", "--quiet", "--restart-step", "edit")
    assert unknown.code == 2 and "--restart-step edit: no step of that name; the steps are generate" \
        in unknown.output


def test_a_journal_with_one_whole_fingerprint_is_adopted(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, emulator_thread)
    assert cli("run", path, "--quiet", env=ENV).code == 0
    journal = tmp_path / "out" / ".pixelmill" / "journal.sqlite"
    with sqlite3.connect(journal) as db:  # as the journals written before step fingerprints were
        db.execute("DELETE FROM meta WHERE key = 'step_fingerprints'")
    db.close()
    emulator_thread.reset_log()
    assert cli("run", path, "--quiet", env=ENV).code == 0  # the same configuration resumes
    assert emulator_thread.count() == 0
    with sqlite3.connect(journal) as db:
        db.execute("DELETE FROM meta WHERE key = 'step_fingerprints'")
    db.close()
    edit_pipeline(path, *FIXED)
    refused = cli("run", path, "--quiet", env=ENV)
    assert refused.code == 2 and "--restart-step on_marble (discards the 3 paid rows" in refused.output
    again = cli("run", path, "--quiet", "--restart-step", "on_marble", env=ENV)
    assert again.code == 0, again.output
    assert requests_of(emulator_thread) == {"product_image": 0, "on_marble": 3, "poster": 0}


def test_retry_failed_is_suggested_only_for_failures_a_retry_can_fix(emulator_thread: Emulator,
                                                                     tmp_path: Path) -> None:
    rows = [*prompts(2), {"prompt": "a server that fails [[fault:server_error]]"}, {"caption": "no prompt here"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    run = tmp_path / "run"
    result = cli("generate", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--max-retries", "0")
    assert result.code == 1, result.output
    retry = [line.removeprefix("pixelmill: ") for line in result.output.splitlines() if "--retry-failed" in line]
    assert len(retry) == 1 and "to retry the 1 row-step a retry can fix (transient): pixelmill generate" \
        in retry[0]
    assert ("input errors in 1 row-step: a retry reads the same input and fails the same way; fix the rows"
            in result.output)
    assert "input x1; e.g. row 3 (row000003): row has no prompt" in result.output
    status = cli("status", run)
    assert [line for line in status.output.splitlines() if "--retry-failed" in line] == retry
    assert "input errors in 1 row-step" in status.output


def test_a_step_that_paid_for_nothing_is_fixed_without_a_flag(emulator_thread: Emulator, tmp_path: Path) -> None:
    """A wrong images field in step 2 fails every row of step 2 on its input before anything is sent for it: the
    fix needs no flag, and step 1's paid rows are kept."""
    # A field every row has, holding no image (a preflight check of the field names lets it through).
    path = write_pipeline(tmp_path, emulator_thread, PIPELINE.replace('images: "{product_image}"',
                                                                      'images: "{product_name}"'))
    first = cli("run", path, "--quiet", env=ENV)
    assert first.code == 1, first.output
    # A row stops at its first failed step: the poster step after it is failed "upstream", and sent nothing.
    assert requests_of(emulator_thread) == {"product_image": 3, "on_marble": 0, "poster": 0}
    edit_pipeline(path, 'images: "{product_name}"', 'images: "{product_image}"')
    emulator_thread.reset_log()
    fixed = cli("run", path, "--quiet", env=ENV)
    assert fixed.code == 0, fixed.output
    assert "steps.on_marble.image_field: 'product_name' -> 'product_image'" in fixed.output
    assert requests_of(emulator_thread) == {"product_image": 0, "on_marble": 3, "poster": 3}
    assert all(r["pixelmill"][s]["status"] == "done" for r in read_output(tmp_path / "out")
               for s in ("product_image", "on_marble", "poster"))


def test_a_renamed_step_is_refused_and_a_dropped_one_is_said(emulator_thread: Emulator, tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, emulator_thread)
    assert cli("run", path, "--quiet", env=ENV).code == 0
    edit_pipeline(path, "name: poster", "name: posters")
    emulator_thread.reset_log()
    renamed = cli("run", path, "--quiet", env=ENV)
    assert renamed.code == 2, renamed.output
    assert ("step 'posters' is new, and step 'poster', made with the same settings (3 paid rows), is no longer in "
            "the configuration: renaming a step makes all its rows again. Keep the name 'poster', or "
            "--restart-step posters to make them again under the new name.") in renamed.output
    assert emulator_thread.count() == 0
    edit_pipeline(path, "name: posters", "name: poster")
    text = path.read_text()
    path.write_text(text[: text.index("  - name: poster")])  # the poster step dropped
    dropped = cli("run", path, "--quiet", env=ENV)
    assert dropped.code == 0, dropped.output
    assert ("no longer in the configuration: poster (3 paid rows); the journal keeps their results (and their "
            "spend), the output leaves them out") in dropped.output
    assert emulator_thread.count() == 0
    assert "no longer in the configuration" not in cli("run", path, "--quiet", env=ENV).output  # said once
