"""Feature selections: which stored feature (and which layers) a head sees.

Grammar: ``[ALIAS/]FEATURE[:LAYERS]`` where LAYERS is only allowed (and required) for
layered features such as wav2vec2:

* ``local``      -> layer 0 (feature-projection output of the CNN encoder)
* ``contextual`` -> the last layer (12 for wav2vec2-base)
* ``all``        -> every layer, through a trainable weighted average
* ``N``          -> layer N
* ``A-B``        -> layers A..B inclusive, through a trainable weighted average

eGeMAPS (100 fps) is averaged in pairs of 10 ms frames to 20 ms so that it runs at the
same ~50 fps as wav2vec2 (the released code's DownsampleDP, mode mean, factor 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from w2v2ser._common import UPSTREAM_FEATURES, did_you_mean

from ._errors import SelectionError

__all__ = ["Selection", "parse_selection", "resolve_selection", "ResolvedSelection", "valid_forms"]

LAYER_KEYWORDS = ("local", "contextual", "all")
# Features whose 10 ms frames are averaged in pairs (paper section 3.2 and the released code).
PAIR_AVERAGED = frozenset({"egemaps"})
_PATTERN = re.compile(r"^(?:(?P<alias>[A-Za-z0-9_.-]+)/)?(?P<feature>[A-Za-z0-9_.-]+)(?::(?P<layers>[A-Za-z0-9-]+))?$")


def valid_forms(upstream: str | None = None) -> str:
    """The selection forms, for messages: a speech encoder's layer forms (of ``upstream``, else the
    first one registered), then the other features of the extractor registry (w2v2ser.extract's
    EXTRACTORS, read when called: it loads no TensorFlow)."""
    from w2v2ser.extract._registry import EXTRACTORS, UPSTREAMS

    upstream = upstream or next((name for name in EXTRACTORS if name in UPSTREAMS), "wav2vec2")
    others = [name for name in EXTRACTORS if name not in UPSTREAMS]
    return (f"{upstream}:local, {upstream}:contextual, {upstream}:all, {upstream}:N (one layer), "
            f"{upstream}:A-B (layer range), {', '.join(others)}; any of them may be prefixed by a store alias, "
            f"e.g. asr/{upstream}:all")


def __getattr__(name: str) -> Any:
    if name == "VALID_FORMS":  # kept for importers; built from the registry when read
        return valid_forms()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Selection:
    """A parsed selection string (not yet checked against a store).

    Attributes:
        text: The selection as written.
        alias: Store alias prefix (``ALIAS/``), or None.
        feature: Feature name.
        layers: ``"local"``, ``"contextual"``, ``"all"``, ``"N"``, ``"A-B"``, or None (no ``:LAYERS``).
    """

    text: str
    alias: str | None
    feature: str
    layers: str | None  # "local" | "contextual" | "all" | "N" | "A-B" | None


@dataclass(frozen=True)
class ResolvedSelection:
    """A selection checked against a store's FeatureSpec.

    Attributes:
        text: The selection as written.
        alias: Store alias it reads from.
        feature: Stored feature name.
        layers: Layer indices read (None for features without a layer axis).
        weighted: True when several layers go through a trainable weighted average.
        pair_average: True when 10 ms frames are averaged in pairs.
        dim: Feature dimension per frame (and per layer).
        frame_rate: Frames per second after pair averaging.
    """

    text: str
    alias: str
    feature: str
    layers: tuple[int, ...] | None
    weighted: bool
    pair_average: bool
    dim: int
    frame_rate: float

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one frame as fed to the head: (layers, dim) or (dim,)."""
        return (len(self.layers), self.dim) if self.weighted else (self.dim,)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"text": self.text, "alias": self.alias, "feature": self.feature,
                "layers": list(self.layers) if self.layers is not None else None,
                "weighted": self.weighted, "pair_average": self.pair_average,
                "dim": self.dim, "frame_rate": self.frame_rate}


def parse_selection(text: str) -> Selection:
    """Parse ``[ALIAS/]FEATURE[:LAYERS]``.

    Args:
        text: The selection string, e.g. ``"wav2vec2:all"`` or ``"main/egemaps"``.

    Raises:
        SelectionError: The string does not follow the grammar.
    """
    if not isinstance(text, str) or not text.strip():
        raise SelectionError(f"feature selection must be a non-empty string, got {text!r}; valid forms: {valid_forms()}")
    match = _PATTERN.match(text.strip())
    # A HuBERT (WavLM, data2vec) selection's message shows that family's forms, not wav2vec2's.
    named = text.strip().partition(":")[0].rpartition("/")[2]
    upstream = named if named in UPSTREAM_FEATURES else None
    if match is None:
        hint = ""
        if "," in text:  # a list of features: one selection per head, plus the fusion head's eGeMAPS branch
            hint = ("; a selection names one feature: to add eGeMAPS to another feature, train the fusion head "
                    "(--head fusion, or head: fusion in pipeline.yaml; its eGeMAPS branch is --fusion-features)")
        raise SelectionError(f"cannot parse feature selection {text!r}; valid forms: {valid_forms(upstream)}{hint}")
    layers = match.group("layers")
    if layers is not None and not (layers in LAYER_KEYWORDS or re.fullmatch(r"\d+(-\d+)?", layers)):
        raise SelectionError(f"cannot parse layers {layers!r} of feature selection {text!r}; valid forms: {valid_forms(upstream)}."
                             f"{did_you_mean(layers, LAYER_KEYWORDS)}")
    return Selection(text=text.strip(), alias=match.group("alias"), feature=match.group("feature"), layers=layers)


def resolve_selection(selection: Selection | str, *, specs: Mapping[str, Any], alias: str,
                      store: str | None = None) -> ResolvedSelection:
    """Check a selection against the FeatureSpecs of its store.

    Args:
        selection: Parsed selection or selection string.
        specs: The store's ``features`` mapping (name -> FeatureSpec), or the open store itself.
        alias: Alias of the store the selection reads from (for messages and records).
        store: How messages name the store (e.g. its path); default: its alias.

    Raises:
        SelectionError: Unknown feature, missing/forbidden layer part, or layer out of range.
    """
    sel = parse_selection(selection) if isinstance(selection, str) else selection
    where = store or f"store {alias!r}"
    if not isinstance(specs, Mapping) and isinstance(getattr(specs, "features", None), Mapping):
        specs = specs.features  # a FeatureStore
    if sel.feature not in specs:
        hint = did_you_mean(sel.feature, specs)
        layered = [name for name, spec in specs.items() if spec.layers]
        if not hint and len(layered) == 1 and (sel.layers is not None or sel.feature in UPSTREAM_FEATURES):
            # Another upstream's name (wav2vec2:all on a HuBERT store): offer the one the store holds.
            hint = f" Did you mean {layered[0] + (':' + sel.layers if sel.layers else '')!r}?"
        raise SelectionError(
            f"feature {sel.feature!r} of selection {sel.text!r} is not in {where}; "
            f"it holds {sorted(specs)} (extract it first, or read it from another store).{hint}")
    spec = specs[sel.feature]
    n_layers = spec.layers
    pair = sel.feature in PAIR_AVERAGED
    rate = float(spec.frame_rate) / (2.0 if pair else 1.0)
    if n_layers is None:
        if sel.layers is not None:
            raise SelectionError(
                f"feature {sel.feature!r} has no layers, but selection {sel.text!r} names layers {sel.layers!r}; "
                f"write just {sel.feature!r}")
        return ResolvedSelection(sel.text, alias, sel.feature, None, False, pair, int(spec.dim), rate)
    if sel.layers is None:
        raise SelectionError(
            f"feature {sel.feature!r} has {n_layers} layers; selection {sel.text!r} must say which: "
            f"{sel.feature}:local, {sel.feature}:contextual, {sel.feature}:all, {sel.feature}:N or {sel.feature}:A-B")
    if sel.layers == "local":
        layers: tuple[int, ...] = (0,)
    elif sel.layers == "contextual":
        layers = (n_layers - 1,)
    elif sel.layers == "all":
        layers = tuple(range(n_layers))
    elif "-" in sel.layers:
        lo, hi = (int(v) for v in sel.layers.split("-"))
        if lo > hi:
            raise SelectionError(f"layer range {sel.layers!r} in {sel.text!r} is reversed; write {hi}-{lo}")
        layers = tuple(range(lo, hi + 1))
    else:
        layers = (int(sel.layers),)
    if max(layers) >= n_layers:
        raise SelectionError(
            f"selection {sel.text!r} asks for layer {max(layers)}, but feature {sel.feature!r} in {where} "
            f"has {n_layers} layers (0..{n_layers - 1}); choose layers within that range")
    return ResolvedSelection(sel.text, alias, sel.feature, layers, len(layers) > 1, pair, int(spec.dim), rate)
