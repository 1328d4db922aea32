"""The benchmark scripts still run: each at its smallest size, results into a temporary folder.

They reach into private module state to compare variants (a codec pipeline, the tensorstore
writer), so a refactor can break them without any other test noticing: bench_store_write.py
failed with an AttributeError for several stops after tensorstore's handle moved modules.
The figures of these tiny runs mean nothing; only that every script finishes and writes its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent / "benchmarks"
RAVDESS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ravdess"

CASES = {
    "bench_store_write": ["--quick"],
    "bench_store_index": ["--rows", "2000", "--speakers", "20"],
    "bench_store": ["--quick", "--no-drop-cache"],
    "bench_sweep": ["--steps", "--problems", "tiny"],
    "bench_ceiling": ["--files", "4", "--shard-size", "2", "--corpus", str(RAVDESS)],
    "bench_fork": ["--utterances", "8"],
    "bench_train": ["--quick"],  # its --quick stores once had a single label, which training refuses
    "bench_head_step": ["--shapes", "base", "--rounds", "2", "--steps", "1", "--frames", "20"],
    "bench_head_step --fold": ["--shapes", "base", "--rounds", "2", "--steps", "1", "--frames", "20", "--fold"],
    "compare_layer_forward": ["--seeds", "2", "--per-actor", "4"],
    "compare_layer_forward --change fold": ["--seeds", "2", "--per-actor", "4", "--change", "fold"],
}


@pytest.mark.slow  # bench_train --quick alone takes about 30 s
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_script_runs_at_its_smallest_size(script: str, tmp_path: Path) -> None:
    if script == "bench_ceiling" and not RAVDESS.is_dir():
        pytest.skip(f"needs the shared RAVDESS copy at {RAVDESS}")
    args = [*CASES[script], "--out", str(tmp_path / "out")]
    script = script.split()[0]  # "NAME --option": the same script with another variant
    if script in ("bench_train", "compare_layer_forward"):  # generated stores go to its cache folder
        args += ["--cache", str(tmp_path / "work" / "not-yet-created")]
    elif script not in ("bench_sweep", "bench_head_step"):
        args += ["--workdir", str(tmp_path / "work" / "not-yet-created")]
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    written = list((tmp_path / "out").glob("*.json"))
    assert written, done.stdout[-2000:]
    assert all(json.loads(p.read_text()).get("headline") for p in written)
