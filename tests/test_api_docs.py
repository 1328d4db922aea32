"""The public API (the packages' ``__all__``) is documented and holds no command-line plumbing."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import re


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


# The packages whose ``__all__`` is the public API (README "Development"); lazily loaded names included.
PUBLIC = ("w2v2ser", "w2v2ser.store", "w2v2ser.extract", "w2v2ser.train", "w2v2ser.evaluate")
_SECTION = re.compile(r"^(\w+(?: \w+)?):\s*$")  # "Args:", "Returns:", "Raises:", "Attributes:", "Example:"
_ENTRY = re.compile(r"^\*{0,2}(\w+)(?:\s*\([^)]*\))?\s*:")  # "name: ...", "name (type): ...", "**kwargs: ..."


def documented(doc: str | None, sections: tuple[str, ...] = ("Args",)) -> set[str]:
    """Names of the entries of a Google-style docstring's sections ``sections`` (first indentation level)."""
    names: set[str] = set()
    inside, indent = False, None
    for line in inspect.cleandoc(doc or "").splitlines():
        header = _SECTION.match(line)
        if header:
            inside, indent = header.group(1) in sections, None
        elif line.strip() and not line[0].isspace():  # unindented text ends a section
            inside = False
        elif inside and line.strip():
            depth = len(line) - len(line.lstrip())
            indent = depth if indent is None else indent
            entry = _ENTRY.match(line.strip())
            if depth == indent and entry:
                names.add(entry.group(1))
    return names


def parameters(function: object) -> list[str]:
    """Named parameters a docstring must list: not self/cls, not *args/**kwargs."""
    try:
        signature = inspect.signature(function)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a built-in (an exception class without its own __init__)
        return []
    return [p.name for p in signature.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("self", "cls")]


def _own_doc(cls: type) -> str | None:
    doc = vars(cls).get("__doc__")
    # A dataclass without a docstring gets its signature as __doc__: "Name(field: type, ...)".
    return None if not doc or doc.startswith(f"{cls.__name__}(") else doc


def _ours(obj: object) -> bool:
    return (getattr(obj, "__module__", None) or "").split(".")[0] == "w2v2ser"


def function_problems(where: str, function: object) -> list[str]:
    doc = getattr(function, "__doc__", None)
    if not doc or not doc.strip():
        return [f"{where}: no docstring"]
    missing = [p for p in parameters(function) if p not in documented(doc)]
    return [f"{where}: its Args section misses {missing}"] if missing else []


def class_problems(where: str, cls: type) -> list[str]:
    if not _own_doc(cls):
        return [f"{where}: no class docstring"]
    problems = []
    ours = [k for k in cls.__mro__ if _ours(k)]
    # __init__'s parameters: in the class docstring (Args or Attributes, as for a dataclass's fields) or in
    # __init__'s own Args, of this class or a w2v2ser base it takes them from ("keys as Wav2Vec2Config").
    known = set().union(*(documented(_own_doc(k), ("Args", "Attributes")) for k in ours),
                        *(documented(getattr(vars(k).get("__init__"), "__doc__", None)) for k in ours))
    if not issubclass(cls, enum.Enum):
        missing = [p for p in parameters(cls) if p not in known]
        if missing:
            problems.append(f"{where}(): neither the class docstring nor __init__'s Args name {missing}")
    for name in sorted(dir(cls)):
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if name.startswith("_") or owner is None or not _ours(owner):
            continue  # private, or inherited from Keras, scikit-learn, Exception...
        member = vars(owner)[name]
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            if not (member.__doc__ or "").strip():
                problems.append(f"{where}.{name}: property without a docstring")
        elif inspect.isfunction(member):
            problems += function_problems(f"{where}.{name}", member)
    return problems


def public_api_problems() -> list[str]:
    problems, seen = [], set()
    for package in PUBLIC:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen or not callable(obj) or not _ours(obj):
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                problems += class_problems(f"{package}.{name}", obj)
            else:
                problems += function_problems(f"{package}.{name}", obj)
    return problems


def test_every_public_callable_documents_its_parameters() -> None:
    problems = public_api_problems()
    assert not problems, "\n".join(problems)


def test_the_docstring_check_sees_a_missing_docstring_and_a_missing_parameter() -> None:
    def complete(path: str, *, mode: str = "r", **options: object) -> None:
        """Open something.

        Args:
            path: Where it is.
            mode (str): How.
                An indented continuation: name: not an entry.
            **options: Anything else.

        Returns:
            Nothing.
        """

    def partial(path: str, mode: str) -> None:
        """Open something.

        Args:
            path: Where it is; mode: is named here, but not as an entry.
        """

    def undocumented(path: str) -> None:
        pass

    @dataclasses.dataclass
    class Record:
        """A record.

        Attributes:
            name: Its name.
        """

        name: str
        size: int = 0

    assert function_problems("complete", complete) == []
    assert function_problems("partial", partial) == ["partial: its Args section misses ['mode']"]
    assert function_problems("undocumented", undocumented) == ["undocumented: no docstring"]
    Record.__module__ = "w2v2ser.fake"
    assert class_problems("Record", Record) == ["Record(): neither the class docstring nor __init__'s Args name ['size']"]
    assert class_problems("Bare", dataclasses.dataclass(type("Bare", (), {"__annotations__": {"x": int}}))) == [
        "Bare: no class docstring"]
