"""Declarative checking of configuration with pydantic, and the one place its errors become messages.

Config dataclasses (extractor configs, ``ExperimentConfig``, recipes) stay plain stdlib dataclasses
with ``to_dict``/``from_dict``; :func:`dataclass_model` derives a pydantic model from their fields,
so a new field is checked (and appears in ``w2v2ser run --schema``) without any schema edit.
Field constraints live in the dataclass annotations (``Annotated[int, Field(ge=1)]``, ``Literal``).

:func:`config_error` turns a pydantic ``ValidationError`` into one :class:`ConfigError` whose lines
name the full key path, what was received and what was expected, with a did-you-mean for misspelt
keys and choices, all derived from pydantic's own error locations and the model's JSON Schema.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from ._common import ConfigError, did_you_mean
from ._overrides import YAML_1_1_BOOLEANS

__all__ = ["StrictModel", "build_dataclass", "check_dataclass", "check_keywords", "config_error", "dataclass_model",
           "validate"]


class StrictModel(BaseModel):
    """Base of every schema model: unknown keys are errors, no silent type coercion (True is not 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field -> text of the Google-style ``Attributes:`` section of a class docstring (for the
    JSON Schema's descriptions, which editors show beside each key)."""
    section = inspect.cleandoc(cls.__doc__ or "").partition("\nAttributes:\n")[2]
    section = re.split(r"\n(?=\S)", section, maxsplit=1)[0]  # up to the next section
    entries = re.finditer(r"^    (\w+)(?: \(.*?\))?: (.*(?:\n {5,}.*)*)", section, re.MULTILINE)
    return {entry[1]: " ".join(entry[2].split()) for entry in entries}


@functools.cache
def dataclass_model(cls: type, *, drop: tuple[str, ...] = (), optional: bool = False,
                    as_lists: bool = False, name: str | None = None) -> type[StrictModel]:
    """A strict pydantic model with one field per field of the dataclass ``cls``.

    Args:
        cls: A stdlib dataclass; field types (and ``Annotated`` constraints) come from its hints.
        drop: Fields left out (set by the program, not by the user).
        optional: Every field defaults to None ("not given"), e.g. for experiment entries.
        as_lists: Every field takes a non-empty list of values (grid axes).
        name: Model name in the JSON Schema (default: the class name).
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    docs = {k: v for klass in reversed(cls.__mro__) for k, v in _attribute_docs(klass).items()}  # subclasses win
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in drop or not field.init:
            continue
        annotation = hints[field.name]  # a tuple field would refuse YAML lists (strict): annotate it Sequence
        if as_lists:
            annotation = Annotated[list[annotation], Field(min_length=1)]  # type: ignore[valid-type]
        if optional or as_lists:
            annotation, default = typing.Optional[annotation], {"default": None}
        elif field.default_factory is not dataclasses.MISSING:
            default = {"default_factory": field.default_factory}
        else:  # no default: required
            default = {} if field.default is dataclasses.MISSING else {"default": field.default}
        fields[field.name] = (annotation, Field(**default, description=docs.get(field.name)))  # type: ignore[arg-type]
    doc = (cls.__doc__ or "").strip().split("\n")[0]
    return create_model(name or cls.__name__, __base__=StrictModel, __doc__=doc, **fields)


def validate(model: Any, data: Any, *, where: str = "", what: str = "", error: type[Exception] = ConfigError,
             context: Any = None) -> Any:
    """``data`` checked against a pydantic model or any type (e.g. ``Literal["a", "b"]``), raising
    ``error`` (a ConfigError; key paths start at ``where``); ``context`` reaches the validators."""
    adapter = TypeAdapter(model)
    try:
        return adapter.validate_python(data, context=context)
    except ValidationError as problem:
        message = str(config_error(problem, adapter.json_schema(), where=where, what=what))
        raise error(message) from None


def check_dataclass(instance: Any, *, what: str = "", where: str = "", error: type[Exception] = ConfigError) -> None:
    """Check a dataclass instance's field values against its annotations (call from ``__post_init__``)."""
    cls = type(instance)
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls) if f.init}
    validate(dataclass_model(cls), values, where=where, what=what, error=error)


def build_dataclass(cls: type, data: Any, *, what: str = "", where: str = "",
                    error: type[Exception] = ConfigError) -> Any:
    """``cls(**data)`` for a config dataclass, after checking ``data`` (a mapping of known keys) against it."""
    data = dict(data) if isinstance(data, Mapping) else data  # a MappingProxyType, an OmegaConf DictConfig
    validate(dataclass_model(cls), data, where=where, what=what, error=error)
    return cls(**data)


def check_keywords(cls: type | None = None, *, error: type[Exception] = ConfigError) -> Any:
    """Class decorator of a config dataclass: a misspelt keyword of ``cls(...)`` is a ConfigError (or ``error``:
    ``@check_keywords(error=...)``) with a did-you-mean, as the same key in a file is, not the plain TypeError
    of the generated ``__init__``."""
    if cls is None:
        return functools.partial(check_keywords, error=error)
    init = cls.__init__
    known = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = [key for key in kwargs if key not in known]
        if unknown:
            lines = [f"{key}: unknown key.{did_you_mean(key, known)}" for key in unknown]
            lines[-1] += f" Valid keys: {', '.join(known)}."
            raise error(str(config_problems(lines, what=cls.__name__)))
        init(self, *args, **kwargs)

    cls.__init__ = checked  # type: ignore[method-assign]
    return cls


# --- errors ----------------------------------------------------------------------------------

_TYPE_NAMES = {dict: "mapping", list: "list", tuple: "list", str: "string", bool: "boolean",
               int: "integer", float: "number", type(None): "null"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
# Location parts that pydantic adds for union members and validators, not keys of the file.
_TAG = re.compile(r"^(?:[a-z][a-z-]*\[.*\]|int|float|str|bool|none|list|dict|tuple|constrained-\w+|"
                  r"function-(?:after|before|plain|wrap))$")


def _children(node: Mapping, schema: Mapping) -> list[Mapping]:
    """The object/array schemas a node can be (through $ref and anyOf: pydantic writes no oneOf/allOf here)."""
    if "$ref" in node:
        return _children(schema["$defs"][node["$ref"].rsplit("/", 1)[-1]], schema)
    return [c for branch in node["anyOf"] for c in _children(branch, schema)] if "anyOf" in node else [node]


def _schema_at(schema: Mapping, loc: Sequence[Any]) -> list[Mapping]:
    """Schemas reached by following ``loc`` (keys and list indexes) from the root."""
    nodes = _children(schema, schema)
    for part in loc:
        following: list[Mapping] = []
        for node in nodes:
            properties, values = node.get("properties", {}), node.get("patternProperties", {}).values()
            children = ([node.get("items")] if isinstance(part, int) else [properties[part]] if part in properties
                        else [node.get("additionalProperties"), *values])  # a mapping's values, whatever the key
            following += [c for child in children if isinstance(child, Mapping) for c in _children(child, schema)]
        nodes = following
    return nodes


def _path(where: str, loc: Sequence[Any]) -> str:
    text = where
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the top level"


def _line(error: Mapping[str, Any], loc: list[Any], schema: Mapping, where: str) -> tuple[str, str, str]:
    """(what was expected, what was received, hint) of one pydantic error; expected "" = free text."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        nodes = _schema_at(schema, loc[:-1])
        allowed = sorted({k for node in nodes for k in node.get("properties", {})})
        # Keys one level down are choices too: max_epochs (an exact match, which difflib ranks first) or a
        # misspelt max_epocs beside recipe_overrides suggests recipe_overrides.max_epochs.
        # The keys of a property's mapping, or of its list's items (recipe_overrides of a grid: [0]).
        below = {key: f"{name}.{key}" for name in allowed for index in ((), (0,))
                 for node in _schema_at(schema, [*loc[:-1], name, *index])
                 for key in sorted(node.get("properties", {})) if key not in allowed}
        hint = did_you_mean(loc[-1], [*allowed, *below], canonical=below)
        if loc[:-1] or where:  # name the full key path, as the file would be written
            hint = hint.replace("mean '", f"mean '{_path(where, loc[:-1])}.")
        return "", "unknown key.", f"{hint} Valid keys here: {', '.join(allowed)}."
    if kind == "missing":
        return "", "required key is missing.", ""
    if kind == "literal_error":
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        return f"one of {', '.join(choices)}", repr(value), did_you_mean(value, choices)
    if kind == "value_error":  # a validator's ValueError: its text
        return "", str(error["msg"]).split(", ", 1)[-1], ""
    message = str(error["msg"])
    if kind in _BOUNDS:
        message = f"Input should be a value {_BOUNDS[kind]} {next(iter(ctx.values()), '?')}"
    elif kind == "too_short":
        message = f"Input should be at least {ctx.get('min_length')} item(s)"
    elif kind == "sequence_str":  # pydantic's 'str' instances are not allowed as a Sequence value
        message = "Input should be a list of strings"
    elif kind == "string_pattern_mismatch":
        message = f"Input should be text matching {ctx.get('pattern')}"
    elif kind == "invalid_key" or error["loc"][-1:] == ("[key]",):  # "Keys should be strings" (a YAML number as a
        message = "Input should be a text key"  # key) or a dict[str, ...]'s key: "[1]: expected a valid string"
    expected = re.sub(r"a valid dictionary( or instance of \w+)?", "a mapping", message.removeprefix("Input should be "))
    typed = _TYPE_NAMES.get(type(value), type(value).__name__) + " " if kind.endswith(("_type", "_parsing")) else ""
    got = "null" if value is None else f"{typed}{value!r}"
    # YAML 1.1 (and PyYAML) read these words as booleans; w2v2ser reads YAML 1.2, where they are text.
    if kind == "bool_type" and isinstance(value, str) and value.lower() in YAML_1_1_BOOLEANS:
        return expected, got, " Write true or false."
    if kind == "string_type" and type(value) is int and error["loc"][-1:] != ("[key]",):  # YAML 1.2: speaker: 08 is 8
        return expected, got, ' Write it in quotes to keep it text, leading zeros included (e.g. "08").'
    if kind == "list_type" and "grid" in loc[:-1]:  # e.g. --set experiments.t.grid.corpus=ravdess
        return expected, got, f" A grid axis lists its values: write [{value}]."
    return expected, got, ""


def config_error(error: ValidationError, schema: Mapping, *, where: str = "", what: str = "") -> ConfigError:
    """One ConfigError listing every problem of a ValidationError, one line per key path.

    Members of a union fail separately in pydantic; their expectations are joined with "or".
    """
    found: dict[str, dict[tuple[str, str, str], None]] = {}
    for item in error.errors(include_url=False):
        loc = [p for p in item["loc"] if not (isinstance(p, str) and (_TAG.match(p) or p == "[key]"))]
        found.setdefault(_path(where, loc), {})[_line(item, loc, schema, where)] = None  # an ordered set
    lines = []
    for path, entries in found.items():
        typed = [e for e in entries if e[0]]
        if typed:
            hints = "".join(dict.fromkeys(e[2] for e in typed))
            lines.append(f"{path}: expected {' or '.join(e[0] for e in typed)}, got {typed[0][1]}.{hints}")
        lines += [f"{path}: {got}{hint}" for expected, got, hint in entries if not expected]
    return config_problems(lines, what=what)


def config_problems(lines: Sequence[str], *, what: str = "") -> ConfigError:
    """One ConfigError for one problem, or "N problems:" and one indented line per problem."""
    head = f"{what}: " if what else ""
    if len(lines) == 1:
        return ConfigError(head + lines[0])
    return ConfigError(f"{head}{len(lines)} problems:\n  " + "\n  ".join(lines))
