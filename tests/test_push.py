"""`pixelmill push RUNDIR OWNER/NAME`, as a real process, against a loopback stand-in of the Hub endpoints that
`huggingface_hub` calls (tests/hub_standin.py): what arrives (the Parquet with embedded images, the card, the
private flag), and the errors a user sees (no token, a refusal), never with the token in them."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pixelmill.testing import Emulator
from tests.hub_standin import HubStandIn, serve
from tests.runs import cli, cli_process, write_jsonl

TOKEN = "hf_standinTokenAbcdefghijklmnopqrstuv"
ROWS = [{"prompt": "a red fox"}, {"prompt": "a cat [[fault:moderation]]"}, {"prompt": "a blue whale"}]


def _push(tmp_path: Path, hub: HubStandIn, *args: str | Path, token: str | None = TOKEN) -> tuple[int, str]:
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", "HF_TOKEN": token or ""}
    proc = cli_process("push", *args, env=env)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out.decode() + err.decode()


def _run(emu: Emulator, tmp_path: Path, *flags: str) -> Path:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    run = tmp_path / "run"
    result = cli("generate", src, "-o", run, "--base-url", emu.openai_base_url, "--quiet", "--max-retries", "0",
                 "--quality", "low", *flags)
    assert result.code == 1, result.output
    return run


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_push_publishes_rows_images_and_card_privately(emulator_thread: Emulator, tmp_path: Path, fmt: str) -> None:
    import datasets

    run = _run(emulator_thread, tmp_path, "--format", fmt)
    with serve(HubStandIn(TOKEN)) as hub:
        code, output = _push(tmp_path, hub, run, "someone/fox-pictures")
    assert code == 0, output
    assert f"pushed 3 rows to {hub.url}/datasets/someone/fox-pictures (private)" in output
    assert TOKEN not in output
    repo = hub.repos["someone/fox-pictures"]
    assert (repo.type, repo.visibility) == ("dataset", "private")
    assert sorted(repo.files) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert "PUT /lfs/" in " ".join(hub.calls)  # the Parquet went through the LFS upload, not inline
    # The data: every row, failed one included, images embedded: it decodes without the run directory.
    shutil.rmtree(run / "images")
    parquet = tmp_path / "pulled.parquet"
    parquet.write_bytes(repo.files["data/train-00000-of-00001.parquet"])
    data = datasets.load_dataset("parquet", data_files=str(parquet), cache_dir=str(tmp_path / "cache"),
                                 split="train")
    rows = list(data)
    assert [r["pixelmill_status"] for r in rows] == ["done", "failed", "done"]
    assert isinstance(rows[0]["images"][0], Image.Image) and rows[1]["images"] == []
    stored = pq.read_table(parquet).column("images").to_pylist()
    assert stored[0][0]["path"] == "images/generate/row000000_0.png"  # no local absolute path travels
    # The card: a YAML header the Hub reads, and the run's models, parameters, counts and cost.
    card = repo.files["README.md"].decode()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["configs"][0]["data_files"][0]["path"] == "data/train-*"
    assert header["task_categories"] == ["text-to-image"] and header["size_categories"] == ["n<1K"]
    assert "| generate | generate | openai | gpt-image-2 | 2 | 1 | 0 | 2 |" in card
    assert '"quality": "low"' in card and "3 rows, 2 images, $" in card
    assert "| generate | refused | 1 |" in card


def test_push_public_and_again_to_an_existing_dataset(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = _run(emulator_thread, tmp_path)
    with serve(HubStandIn(TOKEN)) as hub:
        assert _push(tmp_path, hub, run, "someone/open", "--public")[0] == 0
        code, output = _push(tmp_path, hub, run, "someone/open")  # exists: a new commit, visibility unchanged
    assert code == 0, output
    repo = hub.repos["someone/open"]
    assert repo.visibility == "public" and len(repo.commits) == 2


def test_push_without_a_token_or_with_a_refusal_says_what_to_do(emulator_thread: Emulator, tmp_path: Path) -> None:
    run = _run(emulator_thread, tmp_path)
    with serve(HubStandIn(TOKEN)) as hub:
        code, output = _push(tmp_path, hub, run, "someone/data", token=None)
        assert code == 2 and "no Hugging Face token: set HF_TOKEN" in output, output
        assert hub.calls == []  # nothing was sent
    with serve(HubStandIn(TOKEN, deny=True)) as hub:
        code, output = _push(tmp_path, hub, run, "someone/data")
    assert code == 3, output
    assert "pixelmill: error: the Hub refused the upload to someone/data" in output
    assert "check HF_TOKEN" in output and TOKEN not in output
    assert not (run / ".pixelmill" / "push").exists()  # the staging folder is gone


def test_push_refuses_a_bad_name_and_a_folder_without_a_run(tmp_path: Path) -> None:
    result = cli("push", tmp_path, "no-owner")
    assert result.code == 2 and "'no-owner' is not a dataset name: give OWNER/NAME" in result.output
    result = cli("push", tmp_path, "someone/data")
    assert result.code == 2 and "holds no pixelmill run" in result.output


def test_push_hf_output_and_edit_inputs(emulator_thread: Emulator, tmp_path: Path) -> None:
    """An edit run saved as an HF dataset: the pushed file holds the input images too, embedded."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "teal").save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    src = write_jsonl(tmp_path / "in.jsonl", [{"images": "a.png", "prompt": "make it red"}])
    run = tmp_path / "run"
    result = cli("edit", src, "-o", run, "--base-url", emulator_thread.openai_base_url, "--quiet", "--format", "hf")
    assert result.code == 0, result.output
    with serve(HubStandIn(TOKEN)) as hub:
        code, output = _push(tmp_path, hub, run, "someone/edits")
    assert code == 0, output
    files = hub.repos["someone/edits"].files
    parquet = tmp_path / "pulled.parquet"
    parquet.write_bytes(files["data/train-00000-of-00001.parquet"])
    [row] = pq.read_table(parquet).to_pylist()
    assert row["images"] == {"bytes": buf.getvalue(), "path": "a.png"}
    assert row["output_image"][0]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    assert orjson.loads(row["pixelmill"])["status"] == "done"
    assert "image-to-image" in files["README.md"].decode()
