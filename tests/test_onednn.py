"""Stage 2 asks TensorFlow for its oneDNN kernels on every CPU, unless the user chose.

TensorFlow enables them by default only on AVX-512 VNNI/BF16 or AMX CPUs; on AVX2 machines stage 2
ran 1.15-1.72x faster with them (tests/benchmarks/bench_sweep.py --onednn).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(code: str, **env: str | None) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    environ.update({k: v for k, v in env.items() if v is not None})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("package", ["w2v2ser.train", "w2v2ser.evaluate"])
@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0"), ("1", "1")])
def test_stage2_packages_turn_onednn_on_unless_the_user_chose(package: str, given: str | None, expected: str) -> None:
    code = f"import os, {package}; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    assert _run(code, TF_ENABLE_ONEDNN_OPTS=given) == expected


def test_tensorflow_loaded_first_is_left_as_it_is() -> None:
    # TensorFlow reads the variable when it loads: setting it afterwards would only mislead.
    code = ("import os, sys, types; sys.modules['tensorflow'] = types.ModuleType('tensorflow'); "
            "import w2v2ser.train; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    assert _run(code) == "None"


def test_tensorflow_loaded_by_stage2_has_onednn_on() -> None:
    code = ("import w2v2ser.train, w2v2ser.train._heads; "
            "from tensorflow.python.util import _pywrap_util_port as port; print(port.IsMklEnabled())")
    assert _run(code) == "True"
    assert _run(code, TF_ENABLE_ONEDNN_OPTS="0") == "False"
