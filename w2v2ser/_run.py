"""`w2v2ser run pipeline.yaml`: extract -> train -> evaluate, skipping finished work.

Units of work and how each is committed (so a killed run resumes where it stopped):

* extraction: an utterance x feature group, committed by a journal line in the store
  (``w2v2ser.extract`` / ``w2v2ser.store``); a complete store with the same utterances is
  not even reopened for writing.
* training: a fold x seed run directory, renamed into place when complete and keyed by the
  experiment's ``config_key`` (``w2v2ser.train``); runs with a matching key are not resubmitted.
* evaluation: the report folder, whose files are replaced atomically (``w2v2ser.evaluate``).

A store whose model cannot be loaded (``ModelLoadError``: offline, not cached) is marked
``<store>.skipped.json`` and the experiments reading it get ``RUN_DIR/skipped.json`` with the
reason; so do experiments of a corpus whose path is not set. A model that cannot be loaded for
another reason (a damaged local model, a wrong path) is marked the same way with ``"failed": true``
(a store made with other weights, ``"other_weights": true``): the store fails, and so do the
experiments reading it (``RUN_DIR/failed.json``), also in a later ``--stage train``, so the run
exits 1. Everything else still runs. Each
reason is printed in full once, then referred to (:class:`_Reasons`). The Hugging Face hub is
probed once per extract stage: when it cannot be reached, lookups use the local cache only instead of
retrying with back-off for every model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from ._files import make_folder
from ._config import ConfigError, load_pipeline
from ._stage_common import _LazyCluster, _Outcome, _Reasons, _say
from ._stage_evaluate import _run_evaluate
from ._stage_extract import _extract_in_child, _run_extract
from ._stage_train import _run_train

__all__ = ["STAGES", "run_pipeline"]


STAGES = ("extract", "train", "evaluate")


def run_pipeline(path: Path, *, stage: str | None = None, overrides: Sequence[str] = (), progress: bool = True) -> int:
    """Run a pipeline file's stages in order, skipping work that is already complete.

    Args:
        path: The pipeline.yaml.
        stage: ``extract``, ``train`` or ``evaluate`` to run one stage; None runs all three.
        overrides: ``key.path=value`` settings (``--set``) applied to the file.
        progress: Show the extraction's and the training stage's progress bars (``--no-progress``:
            False); the stage lines and the final summary print either way.

    Returns:
        0 when every stage finished (skipped experiments included), 1 when some unit failed
        (the rest of the work is kept; rerun to retry).

    Raises:
        ConfigError: The file or an override is invalid (nothing has run yet).
    """
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}: expected one of {', '.join(STAGES)}")
    stages = STAGES if stage is None else (stage,)
    started = time.perf_counter()
    # Experiments are checked even for --stage extract (no stage 2 library is loaded for it): a typo
    # there was found only by the training job, after a GPU extraction job of hours.
    config = load_pipeline(path, overrides=overrides)
    make_folder(config.output)
    _say(f"pipeline {config.path}: output {config.output}; stages {', '.join(stages)}; "
         f"{len(config.experiments)} experiment(s)")
    outcomes: dict[str, _Outcome] = {}
    reasons = _Reasons()
    runners = {
        "extract": lambda c: _run_extract(config, c, reasons, progress=progress),
        "train": lambda c: _run_train(config, c, reasons, progress=progress),
        "evaluate": lambda c: _run_evaluate(config),
    }
    for name in stages:
        if name == "extract" and len(stages) > 1:
            # TensorFlow (loaded to check the experiments) and openSMILE crash when they share a
            # process, and stage 1 should never carry stage 2's imports: extract in a fresh child.
            outcomes[name] = _extract_in_child(config.path, overrides, reasons, progress=progress)
            continue
        with ExitStack() as stack:
            cluster = _LazyCluster(config, stack, use_gpus=name == "extract")
            stage_started = time.perf_counter()
            outcomes[name] = runners[name](cluster)
            result = outcomes[name]
            _say(f"stage {name}: {result.done} done, {len(result.skipped)} skipped, {len(result.failed)} failed "
                 f"({time.perf_counter() - stage_started:.1f} s)")
    failed = [item for result in outcomes.values() for item in result.failed]
    _say(f"pipeline finished in {time.perf_counter() - started:.1f} s" +
         (f"; FAILED: {', '.join(failed)} (finished work is kept: rerun to retry)" if failed else ""))
    return 1 if failed else 0
