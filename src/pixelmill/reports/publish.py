"""`pixelmill push RUNDIR OWNER/NAME`: a run published as a Hugging Face Hub dataset, with `huggingface_hub`.

What is uploaded, in one commit: `data/train-00000-of-00001.parquet` (every row of the run's output, whatever its
format, with the images embedded as `Image` structs, so the Hub's viewer shows them and `load_dataset(OWNER/NAME)`
decodes them anywhere; failed and pending rows included, with their status) and `README.md`, the dataset card
(`card.py`: models, parameters, counts, cost). The repository is created private unless `public`; an existing
one gets a new commit (its visibility is left as it is). The token is the Hub's own: `HF_TOKEN`, else the one
saved by `hf auth login`. The Parquet file is built under `RUNDIR/.pixelmill/push/` and removed afterwards;
nothing else of the run changes, and the run's journal is only read.

Uploads go through `HfApi.create_repo` and `HfApi.create_commit`; with `HF_ENDPOINT` set, to that endpoint.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pixelmill.config import RunConfig
from pixelmill.errors import ConfigError, PublishError, redact
from pixelmill.reports.card import dataset_card
from pixelmill.reports.status import load_config, open_journal, output_path, read_status
from pixelmill.writing.image_columns import layout_of
from pixelmill.writing.parquet import write_parquet_from

DATA_FILE = "data/train-00000-of-00001.parquet"
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


@dataclass(slots=True)
class PushResult:
    repo_id: str
    url: str
    private: bool
    rows: int
    files: list[str]


def push_run(rundir: Path, repo_id: str, *, public: bool = False, token: str | None = None) -> PushResult:
    """Publish the run in `rundir` as the dataset `repo_id`. `ConfigError` before anything is sent (no run, no
    output, no token, a bad name); `PublishError` when the Hub refuses or cannot be reached."""
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise ConfigError(f"{repo_id!r} is not a dataset name: give OWNER/NAME (letters, digits, '-', '_', '.')")
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("pixelmill push needs huggingface_hub: pip install 'pixelmill[hf]'") from None
    journal = open_journal(rundir)
    try:
        config = load_config(journal)
    finally:
        journal.close()
    if config is None:
        raise ConfigError(f"cannot read the configuration of the run in {rundir}: run the job again to repair it")
    source = output_path(rundir, config)
    if source is None:
        raise ConfigError(f"{rundir} holds no output yet: run the job (it writes the output even when interrupted)")
    token = token or huggingface_hub.get_token()
    if not token:
        raise ConfigError("no Hugging Face token: set HF_TOKEN, or run `hf auth login`, with a token that may "
                          "write to the namespace")
    status = read_status(rundir)
    work = rundir / ".pixelmill" / "push"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    try:
        rows = _write_data(source, config, work / DATA_FILE)
        (work / "README.md").write_text(dataset_card(repo_id, config, status, rows), encoding="utf-8")
        url = _upload(huggingface_hub, work, repo_id, private=not public, token=token)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PushResult(repo_id, url, not public, rows, [DATA_FILE, "README.md"])


def _write_data(source: Path, config: RunConfig, target: Path) -> int:
    """The run's output as one Parquet file with embedded images; the number of rows."""
    passes: list[int] = []

    def rows() -> Iterator[dict[str, Any]]:
        passes.append(0)
        for row in _output_rows(source):
            passes[-1] += 1
            yield row

    # Rows of any output format: paths relative to RUNDIR (JSONL), absolute (referenced Parquet), data URLs or
    # `Image` dicts (embedded): the image columns take each as it comes and embed its bytes.
    write_parquet_from(target, rows, layout_of(config, embed=True))
    return passes[-1]


def _output_rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            yield from batch.to_pylist()
    else:  # output.hf: read as Arrow, so that images stay {bytes, path} dicts (never decoded)
        import datasets

        data = datasets.load_from_disk(str(path)).with_format("arrow")
        for table in data.iter(batch_size=256):
            yield from table.to_pylist()


def _upload(hub: Any, folder: Path, repo_id: str, *, private: bool, token: str) -> str:
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    api = hub.HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.create_commit(
            repo_id, repo_type="dataset", commit_message="Publish a pixelmill run",
            operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
                        for name in (DATA_FILE, "README.md")])
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = " (check HF_TOKEN: it must be a write token for that namespace)" if status in (401, 403) else ""
        raise PublishError(redact(f"the Hub refused the upload to {repo_id}: {_first_line(exc)}{hint}",
                                  (token,))) from None
    except _transport_errors() as exc:  # the Hub cannot be reached
        raise PublishError(redact(f"cannot reach the Hub ({hub.constants.ENDPOINT}): {exc or type(exc).__name__}; "
                                  "check the network (or HF_ENDPOINT) and push again", (token,))) from None
    except ValueError as exc:  # an answer huggingface_hub could not use (a card the Hub found invalid, ...)
        raise PublishError(redact(f"the Hub refused the upload to {repo_id}: {_first_line(exc)}", (token,))) \
            from None
    return str(repo)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """huggingface_hub's HTTP client's connection errors (httpx2 today, httpx before), and OSError."""
    import importlib

    found: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
