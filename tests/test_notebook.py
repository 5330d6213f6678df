"""The Python API in a real Jupyter kernel: nbclient runs a notebook (built here with nbformat) whose cells call
`pixelmill.generate(..., provider="emulator", progress=True)` and `to_pandas()`, as a data person would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

SRC = Path(__file__).resolve().parents[1] / "src"


def test_generate_and_to_pandas_in_a_jupyter_kernel(tmp_path: Path) -> None:
    cells = [
        "import asyncio, threading, warnings\nwarnings.simplefilter('always')\n"
        "assert asyncio.get_event_loop().is_running()  # a kernel runs its cells inside an event loop",
        "import pixelmill\n"
        "report = pixelmill.generate([{'prompt': f'a lantern {i}'} for i in range(3)], output='run',\n"
        "                            provider='emulator', size='512x512', progress=True)\n"
        "print('exit', report.exit_code)",
        "df = report.to_pandas()\nprint('rows', len(df), sorted(df['pixelmill'].map(lambda m: m['status'])))",
        "import gc\ngc.collect()\n"
        "print('threads', sorted(t.name for t in threading.enumerate() if t.name.startswith('pixelmill')))",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)

    outputs = [out for cell in notebook.cells for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"], outputs
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "never awaited" not in text
    assert "exit 0" in text and "rows 3 ['done', 'done', 'done']" in text and "threads []" in text
    # The progress display: one HTML output, updated in place, ending with how the run ended.
    shown = [out for out in notebook.cells[1].outputs if out.output_type == "display_data"]
    assert len(shown) == 1 and "text/html" in shown[0].data
    assert "<progress" in shown[0].data["text/html"] and "3 rows: 3 done, 0 failed" in shown[0].data["text/html"]
    assert (tmp_path / "run" / "output.jsonl").is_file()
