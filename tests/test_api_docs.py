"""The public API (the packages' ``__all__``) is documented and holds no command-line plumbing."""

from __future__ import annotations

import importlib


def test_evaluate_exports_no_command_line_plumbing() -> None:
    """``w2v2ser predict``'s argument wiring is the CLI's business, not the library's."""
    import w2v2ser.evaluate as evaluate
    from w2v2ser.evaluate._cli import add_predict_arguments, predict_from_cli  # still there for the CLI

    assert callable(add_predict_arguments) and callable(predict_from_cli)
    plumbing = {"add_predict_arguments", "predict_from_cli"}
    assert not plumbing & set(evaluate.__all__), evaluate.__all__
    assert not plumbing & set(vars(importlib.import_module("w2v2ser.evaluate"))), "not in the package's namespace"
    for name in evaluate.__all__:  # what stays is importable as README's examples import it
        assert getattr(evaluate, name) is not None, name
