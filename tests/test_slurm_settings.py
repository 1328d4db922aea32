"""SLURM settings that need no real SLURM: `cluster: slurm` against a stand-in `sbatch`.

The real single-node SLURM tests are in tests/test_slurm.py (marked slow and slurm).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from test_run_pipeline import W2V2SER, cli_env, make_tiny_corpus, needs_ravdess


def _fake_sbatch(folder: Path, stderr: str, code: int) -> dict[str, str]:
    """An environment whose `sbatch` prints ``stderr`` and exits with ``code`` (as a refusing SLURM does)."""
    folder.mkdir()
    sbatch = folder / "sbatch"
    sbatch.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit {code}\n")
    sbatch.chmod(0o755)
    env = cli_env()
    env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    return env


@needs_ravdess
def test_a_worker_job_that_slurm_refuses_is_one_error_not_a_hang(tmp_path: Path) -> None:
    """A walltime sbatch cannot read ("4h") made `run` wait forever for Dask workers whose jobs were
    never submitted, with asyncio tracebacks; it is now exit 2 with sbatch's reason, before any job."""
    pytest.importorskip("dask_jobqueue")
    make_tiny_corpus(tmp_path / "data", actors=("01",))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "output": "out",
        "cluster": {"kind": "slurm", "dashboard_address": None,
                    "slurm": {"queue": "debug", "cores": 1, "memory": "2GB", "walltime": "4h"}},
        "corpora": {"ravdess": {"kind": "ravdess", "path": "data"}},
        "extraction": {"stores": {"classic": {"features": {"egemaps": {}}}}},
        "experiments": {"t": {"corpus": "ravdess", "features": "classic/egemaps", "head": "dense"}},
    }))
    env = _fake_sbatch(tmp_path / "bin", "sbatch: error: Invalid --time specification", 255)
    try:
        done = subprocess.run([str(W2V2SER), "run", str(pipeline), "--stage", "extract"], capture_output=True,
                              text=True, timeout=120, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("w2v2ser run waited for SLURM workers whose job sbatch refused")
    assert done.returncode == 2, done.stderr
    assert "SLURM refuses the Dask worker job of cluster.slurm: sbatch: error: Invalid --time specification" \
        in done.stderr
    assert "walltime" in done.stderr and "Traceback" not in done.stderr
