"""Prerequisites first: an optional package the run needs (`datasets` for `--format hf` and Hugging Face sources,
torch and diffusers for local models) is checked before anything is sent (exit 2, the pip command named). The
packages are made absent for real: the command line runs in a process whose import system refuses them.
A saved Hugging Face dataset as the source is counted from its metadata, never by loading it a second time; `-q`
silences the libraries' progress bars and still prints the failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelmill.testing import Emulator
from tests.runs import TEST_KEY, prompts, read_output, write_jsonl

# Installed in the child process before pixelmill: imports of the named top-level packages fail as they do when
# the package is not installed. With PIXELMILL_TEST_COUNT_LOADS, every `datasets.load_from_disk` is logged.
HOOK = '''
import os, sys

BLOCKED = set(filter(None, os.environ.get("PIXELMILL_TEST_BLOCK", "").split(",")))


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())
LOG = os.environ.get("PIXELMILL_TEST_COUNT_LOADS")
if LOG:
    import datasets

    real = datasets.load_from_disk

    def counted(*args, **kwargs):
        import threading

        name = threading.current_thread().name
        with open(LOG, "a") as f:
            f.write(f"enter {name}\\n")
        try:
            return real(*args, **kwargs)
        finally:
            with open(LOG, "a") as f:
                f.write(f"exit {name}\\n")

    datasets.load_from_disk = counted
'''


def pixelmill(tmp_path: Path, *args: str | Path, block: str = "", count_loads: Path | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m pixelmill ARGS` in a child process with `block` (comma-separated packages) not importable."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY, "PIXELMILL_TEST_BLOCK": block,
           "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("PIXELMILL_TEST_COUNT_LOADS", None)
    if count_loads is not None:
        env["PIXELMILL_TEST_COUNT_LOADS"] = str(count_loads)
    return subprocess.run([sys.executable, "-m", "pixelmill", *[str(a) for a in args]], env=env,
                          capture_output=True, text=True, timeout=timeout)


def saved_dataset(path: Path, rows: list[dict[str, object]]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def test_the_hook_really_blocks(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    pixelmill(tmp_path, "--help")  # writes the hook
    env = {**os.environ, "PIXELMILL_TEST_BLOCK": "datasets", "PYTHONPATH": str(hook)}
    probe = subprocess.run([sys.executable, "-c", "import datasets"], env=env, capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'datasets'" in probe.stderr


def test_format_hf_without_datasets_sends_nothing(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    done = pixelmill(tmp_path, "generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                     "--quality", "low", "--format", "hf", "-q", block="datasets")
    assert emulator_thread.log == []  # before: every image was paid, then the output could not be written
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("pixelmill: error: --format hf needs the datasets package, which is not installed: "
                                   "pip install 'pixelmill[hf]'")
    assert not (tmp_path / "run" / ".pixelmill").exists()


def test_estimate_says_it_too(tmp_path: Path) -> None:
    # `estimate` takes no --format (it writes no output): a source that needs datasets is what it must check.
    src = saved_dataset(tmp_path / "ds", prompts(2))
    done = pixelmill(tmp_path, "estimate", src, block="datasets")
    assert done.returncode == 2 and "pip install 'pixelmill[hf]'" in done.stderr, done.stderr


def test_hf_source_without_datasets(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = saved_dataset(tmp_path / "ds", prompts(3))
    done = pixelmill(tmp_path, "generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                     "-q", block="datasets")
    assert done.returncode == 2, done.stderr
    assert ("a Hugging Face dataset as the source needs the datasets package, which is not installed: pip install "
            "'pixelmill[hf]'") in done.stderr
    assert emulator_thread.log == []


def test_local_model_without_torch(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    done = pixelmill(tmp_path, "generate", src, "-o", tmp_path / "run", "--provider", "diffusers", "--model",
                     str(tmp_path / "weights"), "-q", block="torch,diffusers")
    assert done.returncode == 2, done.stderr
    assert (f"the local model {tmp_path / 'weights'} (provider diffusers) needs the torch and diffusers packages, "
            "which are not installed: pip install 'pixelmill[local]'") in done.stderr
    assert not (tmp_path / "run" / ".pixelmill").exists()


def test_hf_source_counted_from_metadata_without_datasets(tmp_path: Path) -> None:
    saved_dataset(tmp_path / "ds", prompts(37))
    code = ("from pathlib import Path; from pixelmill.reports.status import count_rows; import sys; "
            f"print(count_rows(Path({str(tmp_path / 'ds')!r})), count_rows(Path({str(tmp_path / 'ds')!r}), limit=5), "
            "'datasets' in sys.modules)")
    hook = tmp_path / "hook"
    pixelmill(tmp_path, "--help")
    env = {**os.environ, "PIXELMILL_TEST_BLOCK": "datasets",
           "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == ["37", "5", "False"], probe.stderr


def test_hf_source_is_never_loaded_twice_at_once(emulator_thread: Emulator, tmp_path: Path) -> None:
    emulator_thread.configure(latency=0.05)
    src = saved_dataset(tmp_path / "ds", prompts(24))
    loads = tmp_path / "loads.log"
    done = pixelmill(tmp_path, "generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                     "--quality", "low", "--concurrency", "2", count_loads=loads)
    assert done.returncode == 0, done.stderr
    events = [line.split(" ", 1) for line in loads.read_text().splitlines()]
    # The progress display counted the rows from the metadata, not with a load of its own beside the reader's
    # (`datasets` crashes when two threads load at once): every load is alone, and none is the counter's.
    assert events and [kind for kind, _ in events] == ["enter", "exit"] * (len(events) // 2)
    assert all(thread != "pixelmill-count-rows" for _, thread in events), events
    assert "pixelmill: run " in done.stderr and ": 24 rows: 24 done" in done.stderr


def test_quiet_prints_the_failures_and_no_progress_bars(emulator_thread: Emulator, tmp_path: Path) -> None:
    rows = [{"prompt": "a lamp"}, {"prompt": ""}, {"prompt": "a mug"}]
    src = saved_dataset(tmp_path / "ds", rows)
    done = pixelmill(tmp_path, "generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                     "--quality", "low", "--format", "hf", "-q")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"pixelmill: run {tmp_path / 'run'}: 3 rows: 2 done, 1 failed, 0 pending"
    assert "pixelmill: failures (1 row-steps):" in lines
    assert "pixelmill:   generate: input x1; e.g. row 1 (row000001): field 'prompt' is blank" in lines
    assert all(line.startswith("pixelmill: ") for line in lines), lines  # no "Saving the dataset ... %|" bars
    assert done.stdout == ""
    assert (tmp_path / "run" / "output.hf").is_dir()


def test_quiet_bars_off_in_process(emulator_thread: Emulator, tmp_path: Path,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    """Through the console front end in this process, where `datasets` is already imported: its bars are off
    during the run and back on after, and the environment is as it was."""
    import datasets

    from pixelmill.console import run_with_progress
    from pixelmill.options import build_config, job_options

    assert not datasets.are_progress_bars_disabled()
    config = build_config("generate", write_jsonl(tmp_path / "in.jsonl", prompts(3)), job_options(
        output=tmp_path / "run", base_url=emulator_thread.openai_base_url, api_key=TEST_KEY, quality="low",
        format="hf"))
    report = run_with_progress(config, quiet=True, remember=False)
    assert report.exit_code == 0
    err = capfd.readouterr().err
    assert "Saving the dataset" not in err and "%|" not in err
    assert not datasets.are_progress_bars_disabled()
    assert "TQDM_DISABLE" not in os.environ
    assert len(read_output_hf(tmp_path / "run")) == 3


def read_output_hf(rundir: Path) -> list[dict[str, object]]:
    import datasets

    return list(datasets.load_from_disk(str(rundir / "output.hf")))


def test_rows_of_the_output_are_kept(emulator_thread: Emulator, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", prompts(2))
    done = pixelmill(tmp_path, "generate", src, "-o", tmp_path / "run", "--base-url", emulator_thread.openai_base_url,
                     "--quality", "low", "-q", block="datasets")
    assert done.returncode == 0, done.stderr  # jsonl output needs no optional package
    assert [r["pixelmill"]["status"] for r in read_output(tmp_path / "run")] == ["done", "done"]
