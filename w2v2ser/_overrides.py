"""``--set key.path=value`` overrides and ``${VAR}`` / ``${VAR:-default}`` expansion of pipeline.yaml.

Kept as plain code rather than OmegaConf: OmegaConf's ``${...}`` means a reference to another key
of the file (environment variables are ``${oc.env:VAR,default}``), so adopting it would change the
syntax of every pipeline file in use; these two small functions keep the shell syntax users write.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import yaml

from ._common import ConfigError

__all__ = ["ENV_VARIABLE", "YAML_1_1_BOOLEANS", "apply_overrides", "expand_env", "load_value", "load_yaml"]

_TYPE_NAMES = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer",
               float: "number", type(None): "null"}


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's numbers and booleans. PyYAML follows YAML 1.1, which
    reads ``3e-4`` as a string, ``10:00:00`` (a SLURM walltime) as the base-60 integer 36000, and
    ``off`` (a value of ``cache``), ``on``, ``yes`` and ``no`` as booleans."""


# Words besides true/false that YAML 1.1 (PyYAML) reads as booleans; here they stay text (lower case).
YAML_1_1_BOOLEANS = ("yes", "no", "on", "off")
_INT, _FLOAT, _BOOL = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"
_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_SafeLoader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """YAML 1.2's integers: ``010`` is ten (YAML 1.1, so PyYAML, read it as the octal 8: ``seeds: 010``
    trained 8 seeds, ``walltime: 0100`` asked for 64 minutes), ``0o10`` is octal, ``0x10`` hex."""
    text = loader.construct_scalar(node)
    try:
        return int(text[2:], 8 if text[1] == "o" else 16) if text[:2] in ("0o", "0x") else int(text, 10)
    except (ValueError, IndexError):  # an explicit !!int on text that is not one (!!int 0b11, !!int 1_000)
        raise yaml.constructor.ConstructorError(
            None, None, f"!!int {text!r} is not a YAML 1.2 integer (digits, 0o octal or 0x hex)",
            node.start_mark) from None


_SafeLoader.add_constructor(_INT, _construct_int)
_SafeLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9]+[eE][-+]?[0-9]+
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """YAML text (a file or one ``--set`` value) as Python objects; ``1e-3`` is a number, as in YAML 1.2."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 -- _SafeLoader subclasses yaml.SafeLoader


def load_value(text: str) -> Any:
    """One command-line value (``--set``, ``--option``) as YAML reads it, except where YAML would read its
    end as a comment: then it is the text as given (``--set "output=runs #2"`` was the folder ``runs``)."""
    value = load_yaml(text) if text.strip() else None
    if "#" in text:
        node = yaml.compose(text, Loader=_SafeLoader)
        if node is None or node.end_mark.index < len(text.rstrip()):
            return text.strip()
    return value


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)



def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.path=value`` overrides (value parsed as a YAML scalar) to a raw mapping.

    Missing intermediate mappings are created, so ``corpora.iemocap.path=/data/IEMOCAP`` works
    on a file without an ``iemocap`` entry; unknown keys are then caught by validation.
    """
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set corpora.iemocap.path=/data/IEMOCAP")
        key, _, value_text = text.partition("=")
        # `experiments[0]`, as the errors name a list's item, is `experiments.0`.
        parts = [p for part in key.strip().split(".") for p in _split_indexes(part)]
        if not all(parts):
            raise ConfigError(f"--set {text!r}: empty part in key path {key!r}; write e.g. extraction.shard_size=8")
        try:
            value = load_value(value_text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {text!r}: value {value_text!r} is not valid YAML ({error})") from error
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(part, node, where)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {where} is a {_type_name(node)}, not a mapping")
            if node.get(part) is None:
                node[part] = {}
            elif isinstance(node[part], str) and parts[0] == "cluster" and depth == 0:
                node[part] = {"kind": node[part]}  # `cluster: local` shorthand -> mapping
            node = node[part]
        if isinstance(node, list):
            node[_list_index(parts[-1], node, key)] = value
        elif isinstance(node, dict):
            if parts == ["cluster"] and isinstance(value, str) and isinstance(node.get("cluster"), dict):
                node["cluster"]["kind"] = value  # `--set cluster=none` keeps the other cluster settings
            else:
                node[parts[-1]] = value
        else:
            raise ConfigError(f"--set {text!r}: {'.'.join(parts[:-1])} is a {_type_name(node)}, not a mapping")
    return raw


def _split_indexes(part: str) -> list[str]:
    """``name[0][1]`` -> ``["name", "0", "1"]``; any other part as it is."""
    match = re.fullmatch(r"([^\[\]]*)((?:\[-?[0-9]+\])+)", part)
    if match is None:
        return [part]
    return ([match.group(1)] if match.group(1) else []) + re.findall(r"-?[0-9]+", match.group(2))


def _list_index(part: str, node: list, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set: {where} indexes a list of {len(node)} items; use an index 0..{len(node) - 1}")
    return int(part)


# ${VAR} or ${VAR:-default}
ENV_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_BARE_VARIABLE = re.compile(r"(?<!\$)(?:\$\$)*\$([A-Za-z_][A-Za-z0-9_]*)")  # not after a $$ (a literal $)
_EXPANDED = re.compile(r"\$\$|" + ENV_VARIABLE.pattern)


def expand_env(node: Any, where: str = "") -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of the document; ``$$`` is a literal ``$``
    (not in the lines the job's shell reads, where ``$$`` stays for the shell)."""
    if isinstance(node, dict):
        return {k: expand_env(v, _join(where, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node
    # A shell's $VAR: it would be a folder named "$VAR". Not in the job script lines the job's shell
    # expands (job_script_prologue, the worker's --local-directory); log_directory and the #SBATCH lines are not.
    shell = re.fullmatch(r"cluster\.slurm\.(job_script_prologue(\[[0-9]+\])?|local_directory)", where)
    # The defaults of the ${...} that are expanded: not of an escaped $${X:-...}, which is literal text.
    defaults = [m.span(2) for m in _EXPANDED.finditer(node) if m.group(2) is not None]
    for match in [] if shell else _BARE_VARIABLE.finditer(node):
        name = match.group(1)
        if name not in os.environ:
            continue
        if any(start <= match.start() < end for start, end in defaults):  # ${X:-${NAME}} does not parse
            raise ConfigError(f"{where}: {node!r} names the environment variable {name} as ${name} in a default, "
                              f"which is taken as it is (a default is not expanded); write the value itself there, "
                              f"or set the variable the default stands in for ($$ is a literal $)")
        raise ConfigError(f"{where}: {node!r} names the environment variable {name} as ${name}, which is taken "
                          f"as it is; w2v2ser expands ${{{name}}} and ${{{name}:-default}}: write ${{{name}}} "
                          f"($$ is a literal $)")
    if "${" not in node and ("$$" not in node or shell):
        return node

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name, "")
        if value:
            return value
        if default is not None:  # as in a shell, ${VAR:-default} also stands for an empty VAR
            return default if shell else default.replace("$$", "$")
        # An empty value would silently turn a setting off (a corpus path: the corpus skipped).
        raise ConfigError(f"{where}: environment variable {name} is "
                          f"{'empty' if name in os.environ else 'not set'} (in {node!r}); "
                          f"export it or write ${{{name}:-default}}")

    # The job's shell reads its lines as written: its $$ (the process id) stays $$ there.
    expanded = (ENV_VARIABLE if shell else _EXPANDED).sub(replace, node)
    # A whole-string variable may hold a YAML scalar (a number, null): parse it like the file would.
    if ENV_VARIABLE.fullmatch(node):
        try:  # empty (${X:-}): null, as an empty YAML value; a path key refuses it (w2v2ser._config_paths._resolve_path)
            parsed = load_yaml(expanded) if expanded.strip() else None
        except yaml.YAMLError:
            return expanded
        return parsed if isinstance(parsed, (int, float, bool, type(None))) else expanded
    return expanded
