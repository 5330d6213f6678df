"""`pixelmill status RUNDIR`, and the summary at the end of every run: per step done / failed / pending,
spend against the budget, the calls that may have been billed without an answer (counted in the spend at their
reservation), remote jobs submitted and not yet collected (per step: how many, the oldest one's age), failure
reasons grouped with counts and an example row, how the last run ended, the command that resumes it, and what to
do about failed rows: `--retry-failed` for failures a retry can fix (transient, rate limits, lost answers), what
to change for the others (input, rejected, refused). Everything is read from the journal (and the source, for its
row count), so it works on finished, failed, interrupted and running runs alike, and never changes the run.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pixelmill.config import RunConfig
from pixelmill.errors import ConfigError
from pixelmill.options import command_line, with_option
from pixelmill.writing.batches import read_batches
from pixelmill.writing.journal import Journal

JOURNAL = Path(".pixelmill") / "journal.sqlite"
MESSAGE_MAX = 240  # characters of an example failure message


@dataclass(slots=True)
class StepStatus:
    name: str
    task: str
    provider: str
    model: str
    done: int = 0
    failed: int = 0
    pending: int = 0
    images: int = 0
    spent: float = 0.0
    live_jobs: int = 0  # remote jobs submitted and not yet collected (their rows are pending)
    oldest_job: float | None = None  # when the oldest of them was submitted (epoch seconds)


@dataclass(slots=True)
class FailureGroup:
    step: str
    kind: str
    code: str | None  # the provider's code or reason, or the HTTP status, when there is one
    count: int
    example_row: int
    example_key: str | None
    example_message: str


@dataclass(slots=True)
class RunStatus:
    rundir: Path
    rows: int | None  # rows of the source (None when the source cannot be read)
    rows_seen: int  # rows the journal knows
    steps: list[StepStatus]
    failures: list[FailureGroup]
    spent: float
    budget: float | None
    unanswered_calls: int = 0  # calls that may have been billed without an answer (sent, answer lost or broken)
    unanswered_cost: float = 0.0  # the most they cost (in `spent`)
    done: int = 0  # rows done in every step
    failed: int = 0  # rows failed in some step
    pending: int = 0  # the rest: never sent, or stopped before the end
    output: Path | None = None
    last_run: dict[str, Any] = field(default_factory=dict)
    last_write: float | None = None  # wall-clock time of the journal's last result
    command: str | None = None  # the command that resumes the run
    source_note: str | None = None
    pipeline: bool = False
    # --batch: each batch (seq, id, state, lines, done, failed, created, expires_at), oldest first
    batches: list[dict[str, Any]] = field(default_factory=list)
    # --batch: rows sent again after a batch expired, was cancelled or failed, and how many times in all
    resubmitted_rows: int = 0
    resubmits: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rundir"] = str(self.rundir)
        data["output"] = None if self.output is None else str(self.output)
        return data


# ---------------------------------------------------------------- reading


def journal_path(rundir: Path) -> Path:
    return rundir / JOURNAL


def open_journal(rundir: Path) -> Journal:
    """The journal of an existing run; never creates one."""
    path = journal_path(rundir)
    if not path.is_file():
        raise ConfigError(f"{rundir} holds no pixelmill run (no {JOURNAL}): give the folder that was passed as "
                          "--output (default pixelmill-out/<input name>)")
    try:
        return Journal(path)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"cannot read the journal {path}: {exc}") from exc


def load_config(journal: Journal) -> RunConfig | None:
    """The configuration the run was made with (its snapshot in the journal), or None when unreadable."""
    raw = journal.get_meta("config")
    if raw is None:
        return None
    try:
        return RunConfig.model_validate(orjson.loads(raw))
    except (ValueError, TypeError):
        return None


def count_rows(source: Path, fmt: str | None = None, limit: int | None = None) -> int | None:
    """The number of records `read_records` yields for `source`, read cheaply: non-blank lines of JSONL, CSV
    records, Parquet metadata, a saved Hugging Face dataset's Arrow metadata; a JSON array is parsed. None when
    the source cannot be read, or is a dataset on the hub."""
    from pixelmill.reading.records import read_records, source_format

    try:
        kind = source_format(source, fmt)
        if kind == "jsonl":
            count = 0
            with source.open("rb") as f:
                for line in f:
                    if line.strip():
                        count += 1
        elif kind == "parquet":
            import pyarrow.parquet as pq

            count = int(pq.ParquetFile(source).metadata.num_rows)
        elif kind == "csv":
            import csv

            with source.open("r", encoding="utf-8-sig", newline="") as f:
                count = max(0, sum(1 for _ in csv.reader(f)) - 1)
        elif kind == "hf":
            # From the saved folder's metadata: a second `load_from_disk` beside the run's reader is not safe in
            # `datasets` (and a hub dataset would be streamed twice), so a hub source is not counted.
            from pixelmill.reading.hfsource import count_saved_rows

            found = None if str(source).startswith("hf:") else count_saved_rows(source)
            if found is None:
                return None
            count = found
        else:
            count = sum(1 for _ in read_records(source, kind))
    except (OSError, ConfigError, ValueError):
        return None
    except Exception:  # a broken Parquet file and the like: the count is only informative
        return None
    return count if limit is None else min(count, limit)


def read_status(rundir: Path, *, rows: int | None = None) -> RunStatus:
    """The state of the run in `rundir`. `rows` (the source's row count) is counted when not given."""
    journal = open_journal(rundir)
    try:
        return _read(journal, rundir, rows)
    finally:
        journal.close()


def _read(journal: Journal, rundir: Path, rows: int | None) -> RunStatus:
    config = load_config(journal)
    db = journal.db
    step_names: list[str]
    if config is not None:
        step_names = [s.name for s in config.steps]
    else:
        step_names = [r[0] for r in db.execute("SELECT DISTINCT step FROM results ORDER BY step")]
    source_note = None
    if rows is None and config is not None:
        rows = count_rows(config.source, config.source_format, config.limit)
        if rows is None:
            source_note = f"the source {config.source} cannot be read: pending counts only the rows already seen"
    rows_seen = int(db.execute("SELECT COUNT(*) FROM records WHERE position IS NOT NULL").fetchone()[0])
    total = rows if rows is not None else rows_seen

    steps: list[StepStatus] = []
    for name in step_names:
        step_config = next((s for s in config.steps if s.name == name), None) if config else None
        step = StepStatus(
            name=name,
            task=step_config.task if step_config else "?",
            provider=step_config.model.provider if step_config else "?",
            model=step_config.model.model if step_config else "?",
        )
        for status, n, spent in db.execute(
            f"SELECT status, SUM({_IN_SOURCE}), COALESCE(SUM(cost), 0) FROM results WHERE step = ? GROUP BY status",
            (name,),
        ):  # rows deleted from the input are not counted; what they cost is
            if status == "done":
                step.done = int(n)
            elif status == "failed":
                step.failed = int(n)
            step.spent += float(spent)
        step.images = _images(db, name)
        for _, _, job_state in journal.live_jobs(name):
            step.live_jobs += 1
            submitted = float(job_state.info["job"].get("submitted") or 0.0) or None
            if submitted is not None and (step.oldest_job is None or submitted < step.oldest_job):
                step.oldest_job = submitted
        step.pending = max(0, total - step.done - step.failed)
        steps.append(step)

    done, failed = _row_outcomes(db, step_names)
    if config is not None and rows is not None and _source_changed(journal, config):
        # Edited since the run last read it: the journal's positions are those of the old source, so the rows are
        # counted as they stand now, each found by its identity (a full read; only when the source changed).
        done, failed = _count_by_identity(config, journal, steps)
        source_note = (f"the source {config.source} changed since the last run: counts are of its rows now; run the "
                       "same command again to process the rows it does not have results for")
    unanswered_calls, unanswered_cost = journal.unanswered()
    last_write = db.execute("SELECT MAX(updated) FROM results").fetchone()[0]
    status = RunStatus(
        rundir=rundir,
        rows=rows,
        rows_seen=rows_seen,
        steps=steps,
        failures=_failures(db, step_names),
        spent=journal.spent(),
        budget=config.limits.max_cost if config else None,
        unanswered_calls=unanswered_calls,
        unanswered_cost=unanswered_cost,
        done=done,
        failed=failed,
        pending=max(0, total - done - failed),
        output=_output_path(rundir, config),
        last_run=_meta_json(journal, "last_run"),
        last_write=float(last_write) if last_write is not None else None,
        source_note=source_note,
        pipeline=bool(config and config.pipeline),
        batches=[{"seq": b.seq, "id": b.batch_id, "state": b.info.get("status") or b.state, "lines": b.lines,
                  "done": int(b.info.get("completed") or 0), "failed": int(b.info.get("failed") or 0),
                  "created": b.created, "expires_at": b.info.get("expires_at"), "collected": b.state == "collected"}
                 for b in read_batches(journal)],
    )
    if status.batches:
        status.resubmitted_rows, status.resubmits = _resubmits(db)
    status.command = resume_command(journal, config, status)
    return status


def _source_changed(journal: Journal, config: RunConfig) -> bool:
    from pixelmill.writing.output import source_token

    seen = journal.get_meta("source_seen")
    return bool(seen) and source_token(config.source) != seen


def _count_by_identity(config: RunConfig, journal: Journal, steps: list[StepStatus]) -> tuple[int, int]:
    """Done and failed rows, per step and whole, of the source as it is now (the output's look-up: read only)."""
    from pixelmill.writing.output import OutputCounts, output_rows

    per_step = {step.name: {"done": 0, "failed": 0} for step in steps}
    counts = OutputCounts()
    plain = config.model_copy(update={"embed_images": False})
    for row in output_rows(plain, journal, counts):
        pm = row.get("pixelmill") if isinstance(row.get("pixelmill"), dict) else {}
        assert isinstance(pm, dict)
        objects = pm if config.pipeline else {config.steps[0].name: pm}
        for name, tally in per_step.items():
            obj = objects.get(name)
            state = obj.get("status") if isinstance(obj, dict) else None
            if state in tally:
                tally[state] += 1
    for step in steps:
        step.done, step.failed = per_step[step.name]["done"], per_step[step.name]["failed"]
        step.pending = max(0, counts.rows - step.done - step.failed)
    return counts.done, counts.failed


def _resubmits(db: Any) -> tuple[int, int]:
    """(rows, times) resubmitted in a new batch (engine/batch/resubmits.py), on the steps that have batches."""
    found = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(json_extract(info, '$.resubmits')), 0) FROM results "
        "WHERE step IN (SELECT DISTINCT step FROM batches) AND json_extract(info, '$.resubmits') > 0").fetchone()
    return int(found[0]), int(found[1])


# Results of the rows in the source at the last read: a row deleted from the input is not counted (its spend is).
_IN_SOURCE = "row IN (SELECT row FROM records WHERE position IS NOT NULL)"


def _images(db: sqlite3.Connection, step: str) -> int:
    total = 0
    for (outputs,) in db.execute(f"SELECT outputs FROM results WHERE step = ? AND status = 'done' AND {_IN_SOURCE}",
                                 (step,)):
        total += len(orjson.loads(outputs))
    return total


def _row_outcomes(db: sqlite3.Connection, steps: list[str]) -> tuple[int, int]:
    """(rows done in every step, rows failed in some step): the output's own counts."""
    if not steps:
        return 0, 0
    marks = ",".join("?" * len(steps))
    failed = db.execute(
        f"SELECT COUNT(DISTINCT row) FROM results WHERE status = 'failed' AND step IN ({marks}) AND {_IN_SOURCE}",
        steps
    ).fetchone()[0]
    done = db.execute(
        f"SELECT COUNT(*) FROM (SELECT row FROM results WHERE step IN ({marks}) AND {_IN_SOURCE} GROUP BY row "
        "HAVING SUM(status = 'done') = ?)", (*steps, len(steps))
    ).fetchone()[0]
    return int(done), int(failed)


def _failures(db: sqlite3.Connection, steps: list[str]) -> list[FailureGroup]:
    """Failed rows grouped by step, error kind and code, in order of size, each with its first row."""
    groups: dict[tuple[str, str, str | None], FailureGroup] = {}
    cursor = db.execute(
        "SELECT s.step, r.position, r.key, s.info FROM results s JOIN records r ON r.row = s.row "
        "WHERE s.status = 'failed' AND r.position IS NOT NULL ORDER BY r.position"
    )
    for step, row, key, info in cursor:
        if step not in steps:
            continue
        error = (orjson.loads(info) or {}).get("error") or {}
        kind = str(error.get("kind") or "unknown")
        code = error.get("code") or error.get("reason") or error.get("http_status")
        code = None if code is None else str(code)
        group = groups.get((step, kind, code))
        if group is None:
            message = str(error.get("message") or "")
            if len(message) > MESSAGE_MAX:
                message = message[: MESSAGE_MAX - 1] + "…"
            groups[(step, kind, code)] = FailureGroup(step, kind, code, 1, int(row), key, message)
        else:
            group.count += 1
    return sorted(groups.values(), key=lambda g: (-g.count, g.step, g.example_row))


def _output_path(rundir: Path, config: RunConfig | None) -> Path | None:
    names = ["output.jsonl", "output.parquet", "output.hf"]
    if config is not None:
        names.insert(0, f"output.{config.format}")
    for name in names:
        if (rundir / name).exists():
            return rundir / name
    return None


def output_path(rundir: Path, config: RunConfig | None) -> Path | None:
    """The run's output dataset (output.jsonl, .parquet or .hf; the configured format first), or None."""
    return _output_path(rundir, config)


def _meta_json(journal: Journal, key: str) -> dict[str, Any]:
    raw = journal.get_meta(key)
    if raw is None:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- what the last run did, and how to resume


def remember_outcome(journal: Journal, *, aborted: str | None, kind: str | None, spent: float,
                     requests: int, images: int) -> None:
    """Written at the end of a run, so that `status` can say how it ended (a killed run writes nothing, and
    `status` then says it was interrupted or is still running)."""
    journal.set_meta("last_run", orjson.dumps({
        "finished": time.time(), "aborted": aborted, "kind": kind, "spent": round(spent, 6),
        "requests": requests, "images": images,
    }).decode())


def remember_command(rundir: Path, command: str | None) -> None:
    """Keep the command that resumes the run (see `options.command_line`), for `status` to show. Nothing is written
    when the run left no journal or there is no command."""
    if command is None or not journal_path(rundir).is_file():
        return
    journal = Journal(journal_path(rundir))
    try:
        journal.set_meta("command", command)
    finally:
        journal.close()


def resume_command(journal: Journal, config: RunConfig | None, status: RunStatus) -> str | None:
    """The command that continues the run: the one the command line recorded (with `--provider emulator` as
    given), else one rebuilt from the configuration snapshot (runs made through the Python API)."""
    command = journal.get_meta("command")
    if command is None and config is not None:
        command = command_line(config)
    return command


# ---------------------------------------------------------------- what the user reads


def describe(status: RunStatus, *, now: float | None = None) -> list[str]:
    """The status as lines of plain text (the same lines end every run)."""
    now = time.time() if now is None else now
    lines: list[str] = []
    rows = status.rows if status.rows is not None else status.rows_seen
    lines.append(f"run {status.rundir}: {rows} rows: {status.done} done, {status.failed} failed, "
                 f"{status.pending} pending")
    if status.source_note:
        lines.append(f"note: {status.source_note}")
    lines += _step_table(status.steps)
    budget = f" of a ${status.budget:.2f} budget" if status.budget is not None else ""
    lines.append(f"spent: ${status.spent:.4f}{budget}")
    if status.unanswered_calls:
        lines.append(unanswered_line(status.unanswered_calls, status.unanswered_cost) + " (counted in the spend)")
    lines += _live_jobs_lines(status, now)
    if status.failures:
        lines.append(f"failures ({sum(g.count for g in status.failures)} row-steps):")
        for group in status.failures:
            code = f" {group.code}" if group.code else ""
            where = f"row {group.example_row}" + (f" ({group.example_key})" if group.example_key else "")
            lines.append(f"  {group.step}: {group.kind}{code} x{group.count}; e.g. {where}: {group.example_message}")
    lines += _batch_lines(status, now)
    lines.append(_state_line(status, now))
    lines += next_steps(status)
    if status.output is not None:
        lines.append(f"output: {status.output}")
    return lines


def _live_jobs_lines(status: RunStatus, now: float) -> list[str]:
    """Remote jobs submitted and not yet collected: per step, how many and how old the oldest is."""
    steps = [s for s in status.steps if s.live_jobs]
    if not steps:
        return []
    total = sum(s.live_jobs for s in steps)
    parts = [f"{s.name}: {s.live_jobs}" + (f", the oldest submitted {_ago(now - s.oldest_job)} ago"
                                           if s.oldest_job else "") for s in steps]
    return [f"live remote jobs: {total} ({'; '.join(parts)}), counted in the spend at their reservation: running "
            f"the same command again collects them; `pixelmill cancel {status.rundir}` cancels them"]


def _batch_lines(status: RunStatus, now: float) -> list[str]:
    """One line per batch still live, and a total of those collected."""
    live = [b for b in status.batches if not b["collected"]]
    lines = []
    for b in live:
        expiry = b.get("expires_at")
        expires = ""
        if isinstance(expiry, int | float):  # as the provider said when last polled
            expires = f", expires in {_ago(float(expiry) - now)}" if expiry > now else \
                f", past its expiry by {_ago(now - float(expiry))} (the next run collects what it kept)"
        lines.append(f"batch {b['seq']} {b['id'] or '(not created yet)'}: {b['state']}, {b['done']} done, "
                     f"{b['failed']} failed of {b['lines']} lines, {_ago(now - b['created'])} old{expires}")
    collected = len(status.batches) - len(live)
    if collected:
        lines.append(f"batches collected: {collected}")
    if status.resubmitted_rows:
        lines.append(f"resubmitted: {status.resubmitted_rows} row(s) sent again in a new batch ({status.resubmits} "
                     "time(s) in all) after a batch expired, was cancelled or failed")
    return lines


def unanswered_line(calls: int, cost: float) -> str:
    """The line about calls sent whose answer was lost or broken: the provider may have billed them."""
    return (f"unanswered: {calls} call{'s' if calls != 1 else ''} may have been billed without an answer, at most "
            f"${cost:.4f}")


def _step_table(steps: list[StepStatus]) -> list[str]:
    header = ("step", "model", "done", "failed", "pending", "images", "spent")
    rows = [(s.name, f"{s.provider} {s.model}", str(s.done), str(s.failed), str(s.pending), str(s.images),
             f"${s.spent:.4f}") for s in steps]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [r[i].ljust(widths[i]) if i < 2 else r[i].rjust(widths[i]) for i in range(len(header))]
        out.append("  " + "  ".join(cells))
    return out


def _state_line(status: RunStatus, now: float) -> str:
    last = status.last_run
    finished = last.get("finished")
    write = status.last_write
    if finished is not None and (write is None or write <= float(finished) + 1.0):
        when = _ago(now - float(finished))
        if last.get("aborted"):
            return f"last run: stopped {when} ago: {last['aborted']}"
        return f"last run: finished {when} ago"
    if write is not None:
        return (f"last run: interrupted, or still running (last result written {_ago(now - write)} ago); "
                "running it again resumes it")
    return "last run: nothing recorded yet"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def next_steps(status: RunStatus) -> list[str]:
    """What to run next: resume pending rows (raising the budget when that stopped the run); retry the failed
    rows that a retry can fix, and say what to change for the others."""
    command = status.command
    lines: list[str] = []
    if command is None:
        if status.pending:
            lines.append(f"to continue: run {_yours(status)} again (done rows are not sent again)")
        return lines + _failure_advice(status, command)
    if status.pending:
        budget_hit = status.last_run.get("kind") == "budget" or (
            status.budget is not None and status.spent >= status.budget * 0.98)
        if budget_hit and status.budget is not None:
            per_row = status.spent / status.done if status.done else None
            more = per_row * status.pending if per_row else None
            proposal = status.spent + more if more is not None else status.budget * 2
            proposal = max(proposal * 1.1, status.budget + 0.01)
            if more is not None and per_row is not None:
                lines.append(f"the {status.pending} pending rows need about ${more:.2f} more (${per_row:.4f} a row "
                             "so far)")
            lines.append(f"to continue, raise the budget: {with_option(command, '--max-cost', f'{proposal:.2f}')}")
        else:
            lines.append(f"to continue: {command}")
    return lines + _failure_advice(status, command)


# Failures a retry cannot fix: the same request fails the same way. Other kinds (transient, rate_limited,
# unknown_outcome, internal, ...) are the moment's, and `--retry-failed` is suggested for them. `upstream` rows
# follow the step that failed for them.
_FIX_FIRST = {
    "input": ("input errors", "a retry reads the same input and fails the same way; fix the rows (a changed row "
              "is sent again) or the options that name their fields, then run again"),
    "rejected": ("requests rejected as invalid", "a retry sends the same request; change the parameter or prompt "
                 "the error names, then run again"),
    "refused": ("safety refusals", "a retry sends the same prompt and is refused again; rephrase those prompts or "
                "change their input images"),
    "config": ("configuration errors", "change the configuration, then run again"),
}
# How the lines of that advice begin (the quiet summary keeps them).
ADVICE_LINES = tuple(f"{what} in " for what, _ in _FIX_FIRST.values())
# Refusals that a sampled model may not repeat, so a retry may pass: Gemini's answers without an image (NO_IMAGE,
# text only, IMAGE_OTHER / OTHER), an OpenAI-style answer with no image, a local model's black or NaN image.
# Moderation and safety blocks (OpenAI moderation_blocked, Gemini SAFETY / PROHIBITED_CONTENT) repeat.
SAMPLED_REFUSALS = frozenset({"NO_IMAGE", "text_only", "IMAGE_OTHER", "OTHER", "no_image", "nsfw_or_nan"})


def _row_steps(n: int) -> str:
    return f"{n} row-step{'s' if n != 1 else ''}"


def _yours(status: RunStatus) -> str:
    return "your `pixelmill run` command" if status.pipeline else "the same command"


def _failure_advice(status: RunStatus, command: str | None) -> list[str]:
    """What to do about the failed rows: for failures a retry cannot fix, what to change (the failures listed
    above show an example of each); `--retry-failed` only for the failures a retry can fix."""
    fix: dict[str, int] = {}
    retry: dict[str, int] = {}
    for group in status.failures:
        if group.kind == "upstream":
            continue
        if group.kind in _FIX_FIRST and not (group.kind == "refused" and group.code in SAMPLED_REFUSALS):
            fix[group.kind] = fix.get(group.kind, 0) + group.count
        else:
            retry[group.kind] = retry.get(group.kind, 0) + group.count
    lines = []
    for kind, count in fix.items():
        what, advice = _FIX_FIRST[kind]
        lines.append(f"{what} in {_row_steps(count)}: {advice}")
    if retry:
        what = f"the {_row_steps(sum(retry.values()))} a retry can fix ({', '.join(sorted(retry))})"
        lines.append(f"to retry {what}: {with_option(command, '--retry-failed')}" if command is not None
                     else f"to retry {what}: run {_yours(status)} again with --retry-failed")
    return lines
