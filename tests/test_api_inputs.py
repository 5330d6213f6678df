"""Rows in memory as the Python API's input: each kind streamed through a spool in RUNDIR, resumable, keyed by
`id_field` or content, against the emulator over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pixelmill
from pixelmill.errors import ConfigError
from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, read_output

ROWS = [{"id": f"p{i}", "prompt": f"a lighthouse number {i}", "weight": i / 2} for i in range(4)]


def _options(emu: Emulator, out: Path) -> dict[str, Any]:
    return {"output": out, "base_url": emu.openai_base_url, "api_key": TEST_KEY,
            "engine": {"retry_base": 0.01, "retry_cap": 0.05}}


def _generator() -> Iterator[dict[str, Any]]:
    yield from (dict(row) for row in ROWS)


def _frame() -> Any:
    pandas = pytest.importorskip("pandas")
    return pandas.DataFrame(ROWS)


def _table() -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(ROWS)


def _dataset() -> Any:
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_list(ROWS)


KINDS = {"list": lambda: [dict(r) for r in ROWS], "generator": _generator, "dataframe": _frame, "table": _table,
         "dataset": _dataset}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_rows_in_memory_runs_and_comes_out_unchanged(kind: str, tmp_path: Path,
                                                                   emulator_thread: Emulator) -> None:
    report = pixelmill.generate(KINDS[kind](), **_options(emulator_thread, tmp_path / "run"))
    assert report.exit_code == 0 and report.counts.done == len(ROWS)
    assert emulator_thread.count() == len(ROWS)
    rows = read_output(tmp_path / "run")
    assert [{k: r[k] for k in ("id", "prompt", "weight")} for r in rows] == ROWS
    assert all(len(r["images"]) == 1 and (tmp_path / "run" / r["images"][0]).is_file() for r in rows)
    # The spool is the run's source, kept in RUNDIR: `status` and a re-run read it.
    assert report.config is not None and report.config.source.parent == tmp_path / "run" / ".pixelmill"


def test_a_second_call_with_the_same_rows_pays_nothing(tmp_path: Path, emulator_thread: Emulator) -> None:
    options = _options(emulator_thread, tmp_path / "run")
    first = pixelmill.generate(_generator(), **options)
    assert first.counts.done == len(ROWS) and emulator_thread.count() == len(ROWS)
    again = pixelmill.generate(_generator(), **options)  # a new generator over the same rows
    assert again.exit_code == 0 and again.counts.done == len(ROWS)
    assert again.stats.requests == 0 and emulator_thread.count() == len(ROWS)
    # Rows are found by content: a changed row is the only one sent; by id_field, rows found wherever they stand.
    changed = [*ROWS[:3], {**ROWS[3], "prompt": "a windmill"}]
    third = pixelmill.generate(changed, **options)
    assert third.stats.requests == 1 and emulator_thread.count() == len(ROWS) + 1
    assert [r["prompt"] for r in read_output(tmp_path / "run")][3] == "a windmill"


def test_rows_keyed_by_id_field_resume_in_another_order(tmp_path: Path, emulator_thread: Emulator) -> None:
    options = {**_options(emulator_thread, tmp_path / "run"), "id_field": "id"}
    pixelmill.generate(_frame(), **options)
    again = pixelmill.generate(_frame().iloc[::-1], **options)
    assert again.stats.requests == 0 and again.counts.done == len(ROWS)
    assert [r["id"] for r in again.iter_rows()] == ["p3", "p2", "p1", "p0"]
    assert sorted(p.name for p in (tmp_path / "run" / "images" / "generate").iterdir()) == \
        [f"p{i}_0.png" for i in range(4)]


def test_limit_reads_only_the_first_rows_of_a_generator(tmp_path: Path, emulator_thread: Emulator) -> None:
    report = pixelmill.generate(_generator(), limit=2, **_options(emulator_thread, tmp_path / "run"))
    assert report.counts.rows == 2 and emulator_thread.count() == 2


def test_a_row_that_is_not_a_dict_fails_alone(tmp_path: Path, emulator_thread: Emulator) -> None:
    report = pixelmill.generate([ROWS[0], "not a row", ROWS[1]], **_options(emulator_thread, tmp_path / "run"))
    assert report.exit_code == 1 and report.counts.done == 2 and report.counts.failed == 1
    assert read_output(tmp_path / "run")[1]["pixelmill"]["error"]["kind"] == "input"


def test_relative_image_paths_in_rows_resolve_against_the_working_directory(
        tmp_path: Path, emulator_thread: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "cat.png")
    monkeypatch.chdir(tmp_path)
    report = pixelmill.edit([{"prompt": "make it blue", "images": "cat.png"}],
                            **_options(emulator_thread, tmp_path / "run"))
    assert report.exit_code == 0, list(report.iter_rows())
    assert emulator_thread.count() == 1


def test_inputs_that_are_not_rows_are_refused_with_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="iterable of dicts"):
        pixelmill.generate({"prompt": "a cat"}, output=tmp_path / "run", provider="emulator")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="iterable of dicts"):
        pixelmill.generate(42, output=tmp_path / "run", provider="emulator")  # type: ignore[arg-type]
