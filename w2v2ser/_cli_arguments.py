"""Pieces of the command line's parser shared by its commands: help texts, argument types
(:func:`_count`, :func:`_seconds`) and :class:`_Parser`, argparse with a did-you-mean."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


STORE_HELP = ("store directory or object-store URL (s3://bucket/prefix; endpoint and credentials from "
              "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION or "
              "W2V2SER_STORAGE_OPTIONS)")
PROTOCOL_HELP = ("evaluation protocol (default: the store's corpus, as recorded at extraction; of a store of several "
                 "corpora, the one --subset corpus=NAME keeps)")
FOLDS_HELP = ("cross-validate over K speaker groups instead of the protocol's split (RAVDESS: test actors 23-24): "
              "each group tests once, the next one validates, the rest train; results pool each seed's folds")
SUBSET_HELP = ("train and test on the utterances whose FIELD is one of the VALUEs, e.g. vocal_channel=speech "
               "(RAVDESS speech only) or method=improvised (IEMOCAP); FIELD is speaker, label, gender, session, "
               "split, corpus (ravdess, iemocap, csv, or a CSV manifest's own corpus column) or a key the corpus "
               "reader records (`w2v2ser store info`); repeatable, all must hold")


# --no-progress of extract, store upgrade, train, sweep and run (batch jobs whose logs want only the outcome).
_NO_PROGRESS_HELP = "no progress bars or per-run lines; the final summary still prints"


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (argparse names the option, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (checked even where no model uses it)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text}")
    return value


def _device(text: str) -> str:
    """An argparse type: a speech-encoder device, refused with the same words as ``--option wav2vec2.device=``."""
    from w2v2ser.extract._wav2vec2 import device_problem

    problem = device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with a did-you-mean for a mistyped choice or subcommand (subparsers inherit the class)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            from w2v2ser._common import did_you_mean

            hint = did_you_mean(value, action.choices or ())
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{exc.message}.{hint}") from None

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, except that an unknown argument is reported by the (sub)command it was given to,
        with its usage and a did-you-mean (argparse named none, under the top-level usage)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if not extras:
            return parsed
        parser: argparse.ArgumentParser = self
        while True:  # down to the subcommand that ran: `store info`, not `w2v2ser`
            chosen = next((action.choices.get(getattr(parsed, action.dest, None))  # type: ignore[union-attr]
                           for action in parser._actions if isinstance(action, argparse._SubParsersAction)), None)
            if chosen is None:
                break
            parser = chosen
        from w2v2ser._common import did_you_mean

        options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        unknown = next((e.partition("=")[0] for e in extras if e.startswith("-")), None)
        if unknown in options:  # given before the subcommand: `w2v2ser --verbose train ...`
            hint = f" {unknown} is an option of `{parser.prog}`: put it after the command's name."
        else:
            hint = did_you_mean(unknown, options) if unknown else ""
        parser.error(f"unrecognized arguments: {' '.join(extras)}" + (f".{hint}" if hint else ""))
