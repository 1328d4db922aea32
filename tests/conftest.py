"""Suite-wide test ordering.

openSMILE's native library and TensorFlow do not share a process safely: once TensorFlow
has loaded (it changes the process's malloc settings), openSMILE can abort the whole
interpreter ("malloc(): invalid size"). The product never mixes them (stage 1 and stage 2
run in separate processes; `w2v2ser predict` and `w2v2ser run` extract in a subprocess),
so the suite runs every test that may extract in-process before the first test that
trains with Keras.
"""

from __future__ import annotations

import pytest

# Modules whose tests load Keras/TensorFlow in the pytest process: run last.
STAGE2_MODULES = ("test_train", "test_train_experiment", "test_predict", "test_evaluate", "test_run_pipeline",
                  "test_sweep")


def _is_stage2(item: pytest.Item) -> bool:
    return item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in STAGE2_MODULES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stable sort: stage 1 tests first, stage 2 (TensorFlow) tests after them."""
    items.sort(key=_is_stage2)
