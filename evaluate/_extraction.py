"""Stage 1 for predict: the manifest of the files to extract and the ``w2v2ser extract csv --like``
subprocess that extracts them (this process never imports torch), with stage 1's errors put in
predict's terms (a full disk, a memory limit, a file stage 1 stopped before).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from w2v2ser._common import EXIT_FAILED, FULL_DISK_ERRNOS
from w2v2ser._process import python_command

from ._errors import PredictError

__all__ = ["extract_features"]


def extract_features(manifest: Path, store: Path, *, like: str | Path, features: Sequence[str],
                     model: str | None = None, options: Sequence[str] = ()) -> str | None:
    """Run stage 1 in a subprocess: extract ``features`` of the manifest's files like ``like``.

    Kept as one small function so tests can replace it with a direct store writer.

    Args:
        model: Where the speech encoder's weights are now (``--model``), when not where ``like``
            recorded them; stage 1 checks they are the recorded weights.
        options: ``FEATURE.KEY=VALUE`` options that ``--like`` accepts (``egemaps.sample_rate=16000``).

    Returns:
        None when stage 1 finished; else the error it stopped with (exit 1) when it left a store
        whose finished files can still be labelled (the reason for the others).

    Raises:
        PredictError: the subprocess failed and left no readable store.
    """
    args = ["extract", "csv", str(manifest), "--store", str(store), "--like", str(like),
            "--features", ",".join(features), "--no-progress", *(["--model", model] if model else []),
            *(arg for option in options for arg in ("--option", option))]
    # follow_parent: a predict killed with SIGKILL takes its extraction child with it (Linux). The child writes
    # UTF-8 whatever PYTHONIOENCODING says (the command's restart in UTF-8 mode sets it to a Latin-1 locale's
    # encoding): read with this process's encoding, a path 'données' in its error line ended predict in a
    # UnicodeDecodeError.
    proc = subprocess.run(python_command("w2v2ser._cli", *args, follow_parent=True), capture_output=True,
                          encoding="utf-8", errors="backslashreplace", check=False,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    # Exit 1 leaves an incomplete store whose finished files can still be labelled; exit 2 (bad
    # input, e.g. a store that holds other files under the same ids) leaves nothing to trust.
    lines = [line for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    said = [_in_predict_terms(line.split("error: ", 1)[1]) for line in lines if line.startswith("w2v2ser: error: ")]
    full = bool(said) and any(os.strerror(code) in said[-1] for code in FULL_DISK_ERRNOS)
    if full and not (Path(store) / "zarr.json").exists():  # not extract's "resumes where it stopped", nor --model
        error = PredictError(f"stage 1 could not extract the new audio's features: "
                             f"{_without_advice(said[-1])}. Free space there, or set "
                             f"TMPDIR or pass --work-dir DIR (work_dir=DIR) on a disk with room, then rerun")
        error.exit_code = EXIT_FAILED
        raise error
    if said and said[-1].endswith(_LIMIT_ADVICE) and not (Path(store) / "zarr.json").exists():
        error = PredictError(f"stage 1 could not extract the new audio's features: {said[-1]}")
        error.exit_code = EXIT_FAILED  # a limit, not bad input: the same command runs with more memory
        raise error
    if proc.returncode == 2 or (proc.returncode != 0 and not (Path(store) / "zarr.json").exists()):
        moved = "" if model else (" If the speech encoder's weights have moved since training, pass their new "
                                  "location: w2v2ser predict --model PATH (predict_audio(model=PATH)).")
        if said:  # stage 1's own one-line error, in predict's terms: predict has no --like to drop
            # A run dir records its stores' settings; an older run's are read from its training store.
            source = f"run dir {like}" if (Path(like) / "experiment.json").is_file() else f"the training store {like}"
            reason = re.sub(r"(; drop --like to extract with other options, or drop the option|, or drop --like)",
                            "", said[-1]).replace(f"--like {like}: ", "").replace(f"--like {like}", source)
            raise PredictError(f"stage 1 could not extract the new audio's features with the settings of {source}: "
                               f"{reason}{'' if reason.endswith('.') else '.'}{moved}")
        tail = "\n".join(lines)[-2000:]
        raise PredictError(f"feature extraction failed (exit {proc.returncode}) for manifest {manifest} "
                           f"like store {like}:\n{tail}\nCommand: w2v2ser {' '.join(args)}. Check that stage 1 "
                           f"is installed (pip install 'w2v2ser[extract]').{moved}")
    if proc.returncode == 0:
        return None
    # Only stage 1's own error line: the last line of a killed child (OOM, signal) may be any log line.
    if said:
        return said[-1].strip()
    if proc.returncode < 0:  # e.g. SIGKILL from the out-of-memory killer
        import signal

        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return f"stage 1 was killed by {name} (out of memory? see the system log) before it said why"
    return f"stage 1 exited with status {proc.returncode} without an error line"


_LIMIT_ADVICE = ("raise the limit (`ulimit -v`, `ulimit -u`, the job's --mem), then rerun the same command; predict "
                 "starts over, it keeps no part of a stopped run")


def _in_predict_terms(said: str) -> str:
    """Stage 1's error line, a memory limit's said in predict's terms: extract's advice names options
    predict does not have (--batch-seconds, --decode-workers, --threads) and says its finished work is
    kept, where predict keeps no part of a stopped run."""
    if said.startswith("the process ended abruptly"):
        return (f"stage 1 ended abruptly (killed, or a crash in native code; running out of memory or threads is "
                f"the usual cause): {_LIMIT_ADVICE}")
    what, sep, _ = said.partition(": raise the limit")
    if not sep or not what.startswith(("out of memory", "no new thread could start")):
        return said
    return f"{what}: {_LIMIT_ADVICE}"


# Where stage 1's advice on a full disk starts: StoreFullError's, then describe_path_error's (ENOSPC/EDQUOT, EFBIG).
# EFBIG's cut keeps "a per-file size limit was hit (`ulimit -f`, or a quota)": the only hint for such a limit.
_FULL_DISK_ADVICE = (": free disk space", ". Free space (or raise the quota)", ". Raise it, or write elsewhere")


def _without_advice(said: str) -> str:
    """Stage 1's full-disk error line without extract's advice ("another --out ...", "finished work is
    kept"), which predict replaces with its own: only what was full, e.g. "PATH: No space left on device"."""
    cut = min((said.find(marker) for marker in _FULL_DISK_ADVICE if marker in said), default=len(said))
    return said[:cut].rstrip(".")


def _stopped_reason(said: str, work: Path, *, temporary: bool,
                    what: str = "not extracted: stage 1 stopped before this file") -> str:
    """Why a file has no features when stage 1 stopped (``said``) before extracting it (or ``what`` else
    failed); a full disk names where predict keeps its temporary store and how to put it elsewhere."""
    reason = f"{what} ({said.rstrip('.')})"
    if not any(os.strerror(code) in said for code in FULL_DISK_ERRNOS) and "no space left" not in said.lower():
        return reason
    # Not extract's advice ("extraction resumes where it stopped"): predict starts over; its own follows.
    reason = f"{what} ({_without_advice(said)})"
    if temporary:
        return (f"{reason}. Predict extracts into a temporary folder ({work}, in {work.parent}, which TMPDIR "
                f"chooses): free space there, or set TMPDIR to a folder on a disk with room, or pass "
                f"--work-dir DIR (work_dir=DIR), then rerun")
    return f"{reason}. Free space in the work folder {work.parent}, or pass another --work-dir (work_dir=), then rerun"


def _write_manifest(path: Path, files: Sequence[Path], speakers: Sequence[str]) -> list[str]:
    """CSV manifest for stage 1; ids are positional so results map back without path games."""
    ids = [f"predict{i:05d}" for i in range(len(files))]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker", "id"])
        for uid, file, speaker in zip(ids, files, speakers):
            writer.writerow([str(file), "unknown", speaker, uid])
    return ids
