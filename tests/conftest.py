"""Suite-wide test ordering, and fixtures shared by the store's test modules.

openSMILE's native library and TensorFlow do not share a process safely: once TensorFlow
has loaded (it changes the process's malloc settings), openSMILE can abort the whole
interpreter ("malloc(): invalid size"). The product never mixes them (stage 1 and stage 2
run in separate processes; `w2v2ser predict` and `w2v2ser run` extract in a subprocess),
so the suite runs every test that may extract in-process before the first test that
trains with Keras.
"""

from __future__ import annotations

import os

import pytest

# Modules whose tests load Keras/TensorFlow in the pytest process: run last.
STAGE2_MODULES = ("test_train", "test_train_experiment", "test_predict", "test_evaluate", "test_run_pipeline",
                  "test_sweep")


def _is_stage2(item: pytest.Item) -> bool:
    return item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in STAGE2_MODULES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stable sort: stage 1 tests first, stage 2 (TensorFlow) tests after them.

    Under ``-n auto --dist loadfile`` (the README's command) each process takes whole files in
    this order, so the rule holds in every process.
    """
    items.sort(key=_is_stage2)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one process per core, at most 4 (each loads TensorFlow or torch, ~1 GB)."""
    return max(1, min(os.cpu_count() or 1, 4))
