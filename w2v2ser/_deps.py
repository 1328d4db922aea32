"""Optional dependencies: one line that names the extra to install, instead of a traceback.

Stage 1 needs ``w2v2ser[extract]`` (torch, transformers, opensmile), stage 2 needs
``w2v2ser[train]`` (TensorFlow, Keras), SLURM clusters need ``w2v2ser[cluster]``. Code checks
with :func:`require_modules` before it starts work, and the CLI turns a
``ModuleNotFoundError`` for one of these modules into the same one-line message
(:func:`missing_dependency_error`).
"""

from __future__ import annotations

import importlib.util
import sys

from w2v2ser._common import EXIT_INPUT, W2v2serError

__all__ = ["MissingDependencyError", "missing_dependency_error", "require_modules"]

# Top-level module -> (what needs it, the extra that installs it).
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "opensmile": ("eGeMAPS", "extract"),
    "torch": ("wav2vec2", "extract"),
    "transformers": ("wav2vec2", "extract"),
    "tensorflow": ("Training and evaluation (stage 2)", "train"),
    "keras": ("Training and evaluation (stage 2)", "train"),
    "scipy": ("Training and evaluation (stage 2)", "train"),
    "dask_jobqueue": ("A SLURM cluster", "cluster"),
}


class MissingDependencyError(W2v2serError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that installs it."""

    exit_code = EXIT_INPUT


def _message(module: str, needed_for: str | None = None) -> str:
    what, extra = OPTIONAL_MODULES.get(module, (None, "all"))
    return f'{needed_for or what or "This feature"} needs {module}: pip install "w2v2ser[{extra}]"'


def _installed(module: str) -> bool:
    if module in sys.modules:  # None there means "known to be missing" (also how tests hide one)
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_modules(*modules: str, needed_for: str | None = None) -> None:
    """Raise MissingDependencyError for the first of ``modules`` that is not installed.

    Nothing is imported: the check only looks the modules up.

    Args:
        modules: Top-level module names, e.g. ``"torch", "transformers"``.
        needed_for: What needs them, for the message (default: the known use of each module).

    Raises:
        MissingDependencyError: e.g. ``eGeMAPS needs opensmile: pip install "w2v2ser[extract]"``.
    """
    for module in modules:
        if not _installed(module):
            raise MissingDependencyError(_message(module, needed_for))


def missing_dependency_error(error: BaseException) -> MissingDependencyError | None:
    """The one-line error for a ModuleNotFoundError of a known optional module, else None."""
    if not isinstance(error, ModuleNotFoundError) or error.name is None:
        return None
    module = error.name.split(".")[0]
    if module not in OPTIONAL_MODULES:
        return None
    return MissingDependencyError(_message(module))
