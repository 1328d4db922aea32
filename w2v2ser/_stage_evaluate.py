"""`w2v2ser run`'s evaluate stage: each report of the pipeline file written, after hiding results that
were made by another configuration than the file's now (a --set, or the file edited since training).
"""

from __future__ import annotations

from pathlib import Path

from ._common import W2v2serError
from ._config import ExperimentSpec, PipelineConfig
from ._stage_common import _Outcome, _read_json, _say
from ._stage_train import _mark_not_trained, _renamed_stores


_STALE = "not trained for this configuration"  # the reason of a failed.json the evaluate stage wrote


def _stale_results(experiment: ExperimentSpec) -> str | None:
    """What differs when the results.json in an experiment's run dir were made by another configuration
    than the file's now (a --set, or the file edited, and no train stage run since), else None."""
    from dataclasses import fields

    from w2v2ser.train import ExperimentConfig  # its config only: no TensorFlow
    from w2v2ser.train._config import RUNTIME_FIELDS, SEED_FIELDS

    train_config = ExperimentConfig.from_dict(experiment.config)
    out = experiment.run_dir
    if experiment.sweep:  # its weighted average's results speak for every head, as in the train stage
        from w2v2ser.train import ALL_LAYERS_DIR, sweep_configs

        out = out / ALL_LAYERS_DIR
        if not (out / "results.json").exists():
            return None
        try:
            train_config = sweep_configs(train_config)[ALL_LAYERS_DIR]
        except W2v2serError:  # its store is gone or unreadable: the report says what it can
            return None
    results = _read_json(out / "results.json")
    if not isinstance(results, dict):
        return None
    recorded = results.get("config") if isinstance(results.get("config"), dict) else {}
    now = train_config.to_dict()
    if results.get("config_key") not in train_config.config_keys():
        changed = [f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in now.items()
                   if k not in RUNTIME_FIELDS + SEED_FIELDS + ("stores",) and recorded.get(k) != v]
        return "; ".join(changed) or f"config key {results.get('config_key')} -> {train_config.config_key()}"
    # An option a record predates (first_seed) had its default then.
    defaults = {f.name: f.default for f in fields(ExperimentConfig) if f.name in SEED_FIELDS}
    changed = [f"{k} {recorded.get(k, defaults[k])!r} -> {now[k]!r}" for k in SEED_FIELDS
               if recorded.get(k, defaults[k]) != now[k]]
    changed += _renamed_stores(results, now)  # the train stage's check: it summarises such runs again
    return "; ".join(changed) or None


def _mark_stale(config: PipelineConfig, experiment: ExperimentSpec) -> bool:
    """Mark an experiment whose results.json is of another configuration (failed.json, which the report
    shows instead of those results; the train stage removes it), or unmark one that matches again.
    Returns whether it is stale."""
    marker = _read_json(experiment.run_dir / "failed.json")
    ours = isinstance(marker, dict) and str(marker.get("reason", "")).startswith(_STALE)
    stale = _stale_results(experiment)
    if stale is None:
        if ours:  # back to the configuration that made the results: they are its results again
            (experiment.run_dir / "failed.json").unlink(missing_ok=True)
        return False
    if marker is None or ours:  # a failure of the train stage is the latest word: it stays
        _mark_not_trained(config, experiment, f"{_STALE} ({stale}): run its train stage", marker="failed.json")
    _say(f"report: {experiment.name}: {_STALE}: its results are of another one ({stale}), not shown; "
         "run the train stage")
    return True


def _file_in_the_way(folder: Path) -> Path | None:
    """The file (or other non-folder) at ``folder`` or at one of its parents, where a folder must go."""
    for path in (folder, *folder.parents):
        try:
            if path.exists() and not path.is_dir():
                return path
        except OSError:  # e.g. a name too long: write_report's own error says so
            return None
    return None


def _run_evaluate(config: PipelineConfig) -> _Outcome:
    from w2v2ser.evaluate import write_report
    from w2v2ser.evaluate._rundir import read_run_dir

    outcome = _Outcome()
    reported = {e.name for report in config.reports for e in config.report_experiments(report)}
    for experiment in config.experiments:
        if experiment.name in reported:
            _mark_stale(config, experiment)
    for report in config.reports:
        experiments = config.report_experiments(report)
        if not experiments:
            _say(f"report {report.name}: no experiments match {', '.join(report.experiments)}; nothing written")
            outcome.skipped.append(report.name)
            continue
        baseline = next((e.run_dir for e in experiments if e.name == report.baseline), None)
        summary = None if baseline is None else read_run_dir(baseline)
        if summary is not None and summary.status != "complete":  # e.g. skipped: its model is offline
            # A skip's reason was printed in full by the stage that skipped it: name where it is kept.
            why = f"reason in {baseline / 'skipped.json'}" if summary.status == "skipped" else summary.reason
            _say(f"report {report.name}: baseline {report.baseline} is {summary.status} ({why}); "
                 "the report is written without the comparison")
            baseline = None
        blocking = _file_in_the_way(report.out)
        if blocking is not None:  # write_report's own words name its --out, which `run` has not
            where = "the report's folder" if blocking == report.out else f"a folder of {report.out}"
            _say(f"report {report.name}: FAILED: {blocking} is a file, where {where} goes; move "
                 f"the file away, or rename the report (reports.{report.name}) or the output")
            outcome.failed.append(report.name)
            continue
        try:
            path = write_report([e.run_dir for e in experiments], out=report.out, baseline=baseline)
        except (W2v2serError, OSError) as error:  # e.g. a name too long: this report fails, the others are written
            _say(f"report {report.name}: FAILED: {error}")
            outcome.failed.append(report.name)
            continue
        _say(f"report {report.name}: {path}")
        outcome.done += 1
    return outcome
