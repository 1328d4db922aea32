"""Shared helpers of the benchmark scripts: import bootstrap, machine description, JSON/Markdown output.

Imports only the standard library, so a benchmark pulls in nothing its chosen features do not need.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

# W2V2SER_CODE: another w2v2ser source tree, for a benchmark's --baseline-code child processes.
REPO_ROOT = Path(os.environ.get("W2V2SER_CODE") or Path(__file__).resolve().parents[2])
_START_LOAD = [round(v, 2) for v in os.getloadavg()]  # when the benchmark script started
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def bootstrap_w2v2ser() -> str:
    """Make ``w2v2ser.*`` importable without ``pip install -e``.

    The repo keeps the subpackages in top-level folders (store/, extract/, train/, evaluate/,
    mapped by package_dir in setup.cfg). When the installed package is missing, the root
    package is imported from REPO_ROOT/w2v2ser and REPO_ROOT is appended to its ``__path__``,
    so ``import w2v2ser.store`` finds REPO_ROOT/store. Returns how it was found.
    """
    try:
        import w2v2ser.store  # noqa: F401

        return "installed"
    except ImportError:
        pass
    for name in [m for m in sys.modules if m == "w2v2ser" or m.startswith("w2v2ser.")]:
        del sys.modules[name]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    package = importlib.import_module("w2v2ser")
    if str(REPO_ROOT) not in list(package.__path__):
        package.__path__.append(str(REPO_ROOT))
    importlib.import_module("w2v2ser.store")
    return "bootstrapped from " + str(REPO_ROOT)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of utterances, repetitions, frames)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def machine_info(packages: Iterable[str] = ()) -> dict[str, Any]:
    """CPU model, cores, RAM, load average, Python and package versions (only already imported ones)."""
    versions = {}
    for name in packages:
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": _ram_gib(),
        "load_average": _START_LOAD,
        "load_average_now": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def drop_page_cache() -> bool:
    """Drop the Linux page cache (root only); False when not permitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def evict_page_cache(folder: str | os.PathLike) -> None:
    """Evict the page cache of every file under `folder` (posix_fadvise DONTNEED; no root needed)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(str(v).ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def machine_markdown(info: dict[str, Any]) -> str:
    v = ", ".join(f"{k} {val}" for k, val in info.get("versions", {}).items())
    return (f"Machine: {info['cpu_model']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, "
            f"load average {info['load_average']} (start) / {info.get('load_average_end', '?')} (end), "
            f"Python {info['python']}; {v}")


def write_results(name: str, payload: dict[str, Any], table: str, *, out: str | None, headline: str,
                  notes: Sequence[str] = ()) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` (table + machine description) and return the JSON path."""
    directory = Path(out) if out else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    payload.setdefault("machine", {})["load_average_end"] = load_average()
    payload["headline"] = headline
    payload["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md = [f"# {name}", "", f"Command: `{payload.get('command', '')}`", "", table, "",
          machine_markdown(payload["machine"]), ""]
    md += [f"- {n}" for n in notes]
    md += ["", f"**{headline}**", ""]
    (directory / f"{name}.md").write_text("\n".join(md))
    return path


def quick_out(out: str | None, quick: bool, name: str) -> str | None:
    """The results folder of a run: ``out`` when given, else ``results/`` (None) for a real run.

    A quick (smoke) run without ``--out`` writes into a fresh temporary folder instead, so that it
    never overwrites the committed figures in ``results/`` nor dirties the repository; the folder is
    printed. Pass ``--out tests/benchmarks/results`` to keep a quick run's results there.
    """
    if out or not quick:
        return out
    folder = tempfile.mkdtemp(prefix=f"{name}_quick_")
    print(f"quick run: results go to {folder} (--out DIR to choose)", flush=True)
    return folder


def make_workdir(parent: str | None, prefix: str) -> Path:
    """A fresh folder for a run's files, inside ``parent`` (created if missing) or the temp dir."""
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def command_line() -> str:
    return "python3 " + " ".join([os.path.relpath(sys.argv[0], REPO_ROOT)] + sys.argv[1:])
