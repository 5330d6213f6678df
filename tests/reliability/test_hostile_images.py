"""Input images that are not regular files, and local paths outside the input's folder (item by item, each a
real `pixelmill edit` process on the emulator).

- Only regular files are read: `/dev/zero` once read until memory ran out, a FIFO hung the run for ever; a
  directory, a device, a FIFO or a socket now fails its row with kind `input`, and so does a path holding NUL.
- Rows may only name files inside their input file's folder tree (symlinks resolved first): a downloaded dataset
  once made pixelmill upload `../x.png`, `/abs/x.png` or a symlink's target from anywhere on the disk. The
  refusal does not say whether the file exists.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import stat
import time
from pathlib import Path

import pytest
from PIL import Image

from pixelmill.errors import InputError
from pixelmill.reading.images import InputPolicy, load_image
from pixelmill.testing import Emulator
from tests.reliability.hostile_runs import error_of, output_rows, run_process, status_of
from tests.runs import write_jsonl


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, format="PNG")
    return out.getvalue()


def test_only_regular_files_are_read(emulator_thread: Emulator, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.png").write_bytes(png())
    os.mkfifo(data / "pipe.png")  # nothing ever writes to it: reading it would wait for ever
    (data / "folder.png").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a listening socket: reading it would block
    server.bind(str(data / "sock.png"))
    server.listen(1)
    rows: list[dict[str, object]] = [
        {"prompt": "p", "images": "ok.png"},
        {"prompt": "p", "images": "pipe.png"},
        {"prompt": "p", "images": "folder.png"},
        {"prompt": "p", "images": "sock.png"},
        {"prompt": "p", "images": "ok\x00.png"},
    ]
    expected = [None, "is a FIFO", "is a folder", "is a socket", "holds a NUL byte"]
    try:  # a character device like /dev/zero, inside the input's folder (needs root to make)
        os.mknod(data / "zero.png", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        rows.append({"prompt": "p", "images": "zero.png"})
        expected.append("is a device")
    except PermissionError:
        pass
    rows.append({"prompt": "p", "images": "ok.png"})
    expected.append(None)
    src = write_jsonl(data / "in.jsonl", rows)
    started = time.monotonic()
    try:
        finished = run_process(emulator_thread, "edit", src, tmp_path / "run", timeout=60)
    finally:
        server.close()
    assert finished.code == 1, finished.stderr
    assert time.monotonic() - started < 60
    out = output_rows(tmp_path / "run")
    assert len(out) == len(rows)
    for row, words in zip(out, expected, strict=True):
        if words is None:
            assert row["pixelmill"]["status"] == "done", row["pixelmill"]
        else:
            error = error_of(row)
            assert error["kind"] == "input" and error["field"] == "images" and words in error["message"], error
    assert emulator_thread.count(endpoint="edits") == 2


def test_dev_zero_fails_at_once_when_its_folder_is_allowed() -> None:
    """Even where /dev is an allowed folder, /dev/zero is a device: refused from its kind, never read."""
    policy = InputPolicy(base_dir=Path("/nonexistent-input-folder"), allowed_paths=(Path("/dev"),))
    started = time.monotonic()
    with pytest.raises(InputError, match="is a device"):
        asyncio.run(load_image("/dev/zero", field="images", policy=policy, session=None))
    assert time.monotonic() - started < 5


def test_paths_outside_the_input_folder_are_refused(emulator_thread: Emulator, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "photo.png").write_bytes(png((1, 2, 3)))
    (data / "ok.png").write_bytes(png())
    (data / "sub" / "ok2.png").write_bytes(png())
    os.symlink(secret / "photo.png", data / "link_out.png")
    os.symlink(data / "ok.png", data / "sub" / "link_in.png")
    os.symlink(secret, data / "private_dir")
    rows = [
        ("ok.png", True),
        ("sub/ok2.png", True),
        (str(data / "ok.png"), True),  # absolute, but inside the folder
        ("sub/link_in.png", True),  # a symlink whose target is inside
        ("sub/../ok.png", True),
        ("../private/photo.png", False),
        (str(secret / "photo.png"), False),
        ("link_out.png", False),  # a symlink inside pointing outside
        ("private_dir/photo.png", False),  # through a symlinked folder
        ("../private/missing.png", False),
        (str(secret / "missing.png"), False),
        ("sub/../../private/photo.png", False),
    ]
    src = write_jsonl(data / "in.jsonl", [{"prompt": "p", "images": ref} for ref, _ in rows])
    finished = run_process(emulator_thread, "edit", src, tmp_path / "run")
    assert finished.code == 1, finished.stderr
    out = output_rows(tmp_path / "run")
    assert status_of(out) == ["done" if allowed else "failed" for _, allowed in rows]
    refusals = set()
    for row, (ref, allowed) in zip(out, rows, strict=True):
        if allowed:
            continue
        error = error_of(row)
        assert error["kind"] == "input" and error["field"] == "images"
        assert "outside the folders images are read from" in error["message"] and "--allow-path" in error["message"]
        refusals.add(error["message"].replace(ref, "REF"))
    assert len(refusals) == 1, refusals  # existing or missing: the same words, so nothing about the disk leaks
    assert emulator_thread.count(endpoint="edits") == 5  # the private photo was never sent


def test_allowed_paths_open_a_folder_and_only_that_folder(tmp_path: Path) -> None:
    data, extra, other = tmp_path / "data", tmp_path / "shared", tmp_path / "other"
    for folder in (data, extra, other):
        folder.mkdir()
        (folder / "x.png").write_bytes(png())
    policy = InputPolicy(base_dir=data, allowed_paths=(extra,))

    def load(ref: str) -> object:
        return asyncio.run(load_image(ref, field="images", policy=policy, session=None))

    assert load("x.png") is not None
    assert load(str(extra / "x.png")) is not None
    assert load("../shared/x.png") is not None
    with pytest.raises(InputError, match="outside the folders"):
        load(str(other / "x.png"))
    with pytest.raises(InputError, match="outside the folders"):
        load(str(tmp_path / "shared-but-not" / "x.png"))  # a sibling whose name starts the same
