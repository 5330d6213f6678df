"""The benchmark code runs end to end and produces its figures (no timing is asserted: that is bench/'s job,
on a quiet machine). Emulator and client are real processes, as in `python -m bench.run`."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import latency
from bench.pool import perfect_pool_span


def test_perfect_pool_fills_the_earliest_free_slot() -> None:
    # Two slots: 3 s | 1 s, then the 1 s slot takes the next two (1+1+1 = 3), the span is 3.
    assert perfect_pool_span([3.0, 1.0, 1.0, 1.0], 2) == pytest.approx(3.0)
    # Arrival order matters: the long one, last, starts at 1 s in the first slot to free up and ends at 4 s.
    assert perfect_pool_span([1.0, 1.0, 1.0, 3.0], 2) == pytest.approx(4.0)
    assert perfect_pool_span([0.5] * 8, 8) == pytest.approx(0.5)
    assert perfect_pool_span([], 4) == 0.0


def test_latency_benchmark_produces_its_figures(tmp_path: Path) -> None:
    (row,) = latency.run(tmp_path, [(20, 4)], median=0.02, warm=8)
    d = row.details
    assert row.bench == "latency" and row.case == "N=20 C=4"
    assert d["exit_code"] == 0
    assert d["requests"] == d["answered"] == 20
    assert d["emulator_max_in_flight"] <= 4
    assert 0 < d["bound_span_s"] <= d["achieved_span_s"] * 1.05  # a bound, up to clock granularity
    assert row.figure == pytest.approx(d["bound_span_s"] / d["achieved_span_s"], abs=0.01)
    assert d["client_cpu_ms_per_image"] > 0
    assert (tmp_path / "latency-n20-c4" / "output.jsonl").read_text().count("\n") == 20
