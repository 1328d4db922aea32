"""Training recipes: named, fully overridable optimisation hyperparameters."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Mapping

from ._errors import ConfigError

__all__ = ["Recipe", "RECIPES", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """Optimisation hyperparameters of one training run.

    Attributes:
        name: Recipe name the values started from ("paper", "official", or custom).
        learning_rate: Adam learning rate.
        clipvalue: Gradient clipping by value (None = no clipping).
        batch_size: Utterances per batch.
        max_epochs: Upper bound on epochs.
        patience: Early-stopping patience on validation loss (epochs).
        restore_best: Restore the weights of the best validation-loss epoch at the end.
    """

    name: str = "paper"
    learning_rate: float = 1e-3
    clipvalue: float | None = None
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 4
    restore_best: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ConfigError(f"recipe learning_rate must be a positive number, got {self.learning_rate!r}")
        if self.clipvalue is not None and not self.clipvalue > 0:
            raise ConfigError(f"recipe clipvalue must be positive or None, got {self.clipvalue!r}")
        for key in ("batch_size", "max_epochs"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"recipe {key} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.patience, int) and self.patience >= 0):
            raise ConfigError(f"recipe patience must be an integer >= 0, got {self.patience!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """Build from a dict; unknown keys raise ConfigError with a suggestion."""
        reject_unknown_keys(d, cls, "recipe")
        return cls(**dict(d))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Recipe":
        """Return a copy with some hyperparameters replaced (unknown keys raise)."""
        reject_unknown_keys(overrides, type(self), "recipe override")
        return dataclasses.replace(self, **dict(overrides))


# paper: the text of Pepino et al. (2021). official: configs/dienen/mean_mlp.yaml of the released code.
RECIPES: dict[str, Recipe] = {
    "paper": Recipe(name="paper", learning_rate=1e-3, clipvalue=None, batch_size=32, max_epochs=100, patience=4),
    "official": Recipe(name="official", learning_rate=1e-4, clipvalue=1.0, batch_size=32, max_epochs=100, patience=4),
}


def get_recipe(name: str, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Return the named recipe, optionally with some hyperparameters overridden.

    Args:
        name: "paper" or "official".
        overrides: Field name -> value, e.g. {"learning_rate": 3e-4}.

    Raises:
        ConfigError: Unknown recipe name or override key.
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)} (set recipe: paper|official)")
    return RECIPES[name].with_overrides(overrides or {})


def reject_unknown_keys(d: Mapping[str, Any], cls: type, what: str) -> None:
    """Raise ConfigError naming an unknown key of ``cls`` with a did-you-mean hint."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {what} key {key!r}{hint} Valid keys: {names}")
