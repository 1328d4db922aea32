"""Training recipes: named, fully overridable optimisation hyperparameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, Optional

import numpy as np
from pydantic import Field

from w2v2ser._schema import build_dataclass, check_dataclass, check_keywords, validate

__all__ = ["Recipe", "RECIPES", "get_recipe"]


def plain_scalar(value: Any) -> Any:
    """A numpy scalar (``np.int64`` from ``np.arange``, ``np.float32``, ``np.bool_``) as the Python value it
    holds, anything else as given: the strict checks refused ``seeds=np.int64(2)`` ("expected a valid integer")."""
    return value.item() if isinstance(value, np.generic) else value


@check_keywords
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
    learning_rate: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-3  # inf trained to NaN weights
    clipvalue: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = None  # None: no clipping
    batch_size: Annotated[int, Field(ge=1)] = 32
    max_epochs: Annotated[int, Field(ge=1)] = 100
    patience: Annotated[int, Field(ge=0)] = 4
    restore_best: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, plain_scalar(getattr(self, f.name)))
        check_dataclass(self, what="recipe")  # bounds are the annotations above

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """Build from a dict; unknown keys raise ConfigError with a suggestion.

        Args:
            d: Field name -> value, as :meth:`to_dict` returns it.
        """
        return build_dataclass(cls, d, what="recipe")

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Recipe":
        """Return a copy with some hyperparameters replaced (unknown keys raise ConfigError).

        Args:
            overrides: Field name -> new value.
        """
        overrides = validate(dict[str, Any], overrides, what="recipe override")  # a list raised a TypeError
        overrides = {k: plain_scalar(v) for k, v in overrides.items()}
        return build_dataclass(type(self), {**self.to_dict(), **overrides}, what="recipe override")


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
    validate(Literal[tuple(RECIPES)], name, where="recipe")
    return RECIPES[name].with_overrides(overrides or {})
