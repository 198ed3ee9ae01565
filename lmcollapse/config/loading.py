"""Reading a pipeline file: YAML with no duplicate keys, its ``base:`` pipeline merged under it,
dotted overrides applied, every value coerced to its field's type.

    config = load_config(Path("pipelines/tiny.yaml"), ["train.epochs=1"])
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from lmcollapse.config.pipeline_config import PipelineConfig, safe_name
from lmcollapse.errors import ConfigError


def load_config(path: Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read a pipeline YAML (or the defaults when ``path`` is None) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = _read_with_base(path)
        raw.setdefault("name", safe_name(path.stem))  # "my pipeline.yaml" runs as runs/my-pipeline
    for key, value in parse_overrides(overrides).items():
        set_dotted(raw, key, value)
    return build_config(raw)


def _read_with_base(path: Path, children: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A pipeline file with its ``base:`` pipeline (a file path relative to it) merged underneath:
    a variant states only what it changes. The base's name and description are not inherited."""
    raw = read_yaml_mapping(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base must name a pipeline file relative to it (e.g. base: tiny.yaml), got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in (*children, path)}:
        raise ConfigError(f"{path}: base {base} leads back to {path.name} (a cycle): point base at another pipeline")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base pipeline {base_path} not found: name a file relative to {path.parent} "
                          "(e.g. base: tiny.yaml)")
    parent = _read_with_base(base_path, (*children, path))
    parent.pop("name", None)
    parent.pop("description", None)
    return merge_sections(parent, raw)


def merge_sections(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied: sections merge key by key, values (lists too) replace."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_mapping(path: Path, what: str = "pipeline file") -> dict[str, Any]:
    """The top-level mapping of a pipeline (or study) file: UTF-8, valid YAML read safely, no
    duplicate keys, not empty."""
    path = Path(path)
    folder = "studies" if what.startswith("study") else "pipelines"
    if path.is_dir():
        default = path / "tiny.yaml"  # the default pipeline when this is the pipelines folder
        example = default if default.is_file() else next(iter(sorted(path.glob("*.yaml"))), Path(f"{folder}/tiny.yaml"))
        raise ConfigError(f"{what} {path} is a directory: pass a YAML file (e.g. {example})")
    if not path.exists():
        example = "studies/regimes.yaml" if folder == "studies" else "pipelines/tiny.yaml"
        raise ConfigError(f"{what} {path} not found: pick one from {folder}/ (e.g. {example})")
    if not path.is_file():
        raise ConfigError(f"{what} {path} is not a regular file: pass a YAML file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be read ({err.strerror}): check its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}): re-encode the file "
                          f"as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path} > fixed.yaml)") from None
    try:
        raw = _load_yaml(text, path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())  # one line
        if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow
            line = text.count("\n", 0, err.position) + 1
            where = f" line {line}"
            problem = f"character U+{err.character:04X} is not allowed: remove it"
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if raw is None:
        raise ConfigError(f"{what} {path} is empty (no settings, only blank lines or comments): write its "
                          f"settings, e.g. start from a copy of {'studies/regimes.yaml' if folder == 'studies' else 'pipelines/tiny.yaml'}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of {'keys' if folder == 'studies' else 'config sections'} at the top level")
    return raw


def _load_yaml(text: str, path: Path) -> Any:
    """``yaml.safe_load``, refusing duplicate keys; None for a document with no content."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_duplicate_keys(root: yaml.Node, path: Path) -> None:
    """A key set twice in one mapping is an error; ``yaml.safe_load`` would keep the last silently."""
    seen_nodes: set[int] = set()
    todo: list[tuple[yaml.Node, str]] = [(root, "")]
    while todo:
        node, where = todo.pop()
        if id(node) in seen_nodes:  # aliases share nodes (and may be recursive)
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key.start_mark.line + 1
                dotted = f"{where}.{key.value}" if where else str(key.value)
                if key.value in first_line:
                    raise ConfigError(f"{path} line {line}: duplicate key {dotted} (first set on line "
                                      f"{first_line[key.value]}): keep one of them (YAML would silently use the last)")
                first_line[key.value] = line
                todo.append((value, dotted))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))


def build_config(raw: dict[str, Any]) -> PipelineConfig:
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("chain"), list) and model["chain"] and "name" not in model:
        raw = {**raw, "model": {**model, "name": model["chain"][0]}}  # generation 0's family is chain[0]
    return _build(PipelineConfig, raw, "")


def build_config_section(cls: type, raw: Any, prefix: str = "") -> Any:
    """Any config dataclass from its raw mapping: unknown keys (with a did-you-mean), wrong types and
    impossible values are one-line errors naming the dotted key, as for the pipeline config."""
    return _build(cls, raw, prefix)


# One override's words: runs of plain characters, [list] values and quoted values ("a b"), so
# that "a=[1, 2] b=3" is two overrides and description="a b" one. A stray quote or bracket is an
# ordinary character.
_OVERRIDE_WORD = re.compile(r"""(?:[^\s\["']+|\[[^\]]*\]|"[^"]*"|'[^']*'|["'\[])+""")


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.epochs=1", "seed=3"]`` -> ``{"train.epochs": 1, "seed": 3}`` (values as YAML).

    A word without ``=`` continues the value before it, so ``description=a b`` (one argument, or
    two where ``make`` split ``SET="description=a b"``) sets the text "a b"; quotes work too
    (``SET='description="a b=c"'``).
    """
    texts: dict[str, str] = {}
    last = None
    for item in overrides:
        for token in _OVERRIDE_WORD.findall(item):
            key, sep, text = token.partition("=")
            if not sep and last is not None:
                texts[last] += " " + token
                continue
            if not sep or not key:
                raise ConfigError(f"override {token!r} is not key=value (e.g. SET=\"train.epochs=1\")")
            if key in texts:
                raise ConfigError(f"override {key} is given twice ({key}={texts[key]} and {key}={text}): give it once")
            texts[key], last = text, key
    parsed: dict[str, Any] = {}
    for key, text in texts.items():
        if OCTAL_LOOKING.fullmatch(text):
            raise ConfigError(f"override {key}={text}: YAML reads a number with a leading 0 as octal "
                              f"({yaml.safe_load(text)}): write {key}={int(text.replace('_', ''), 10)}, or quote it "
                              f"as text ({key}='{text}')")
        if COMMENT.search(text) and not text.startswith(("'", '"')):
            parsed[key] = text  # YAML would drop everything from the '#' on: on a command line it is text
            continue
        try:
            parsed[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            parsed[key] = text
    return parsed


OCTAL_LOOKING = re.compile(r"[-+]?0[0-9_]+")
COMMENT = re.compile(r"(^|\s)#")


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw`` (a nested mapping, as YAML reads a pipeline) with ``key`` (dotted) set to ``value``."""
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:depth + 1])} is a value, not a section: cannot set {key}")
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a section (a mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    aliases = getattr(cls, "ALIASES", {})
    for alias, name in aliases.items():
        if alias in data and name in data:
            raise ConfigError(f"{prefix}{alias} and {prefix}{name} are one setting: keep one of them")
    data = {aliases.get(key, key): value for key, value in data.items()}
    for key in data:
        if key not in names:
            close = [COMMON_NAMES[key]] if COMMON_NAMES.get(key) in names else difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {name: _coerce(hints[name], data[name], f"{prefix}{name}") for name in names if name in data}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # __post_init__ names keys relative to its own section.
        raise ConfigError(f"{prefix}{err}") from None


# Names people type for a setting that spelling alone does not lead to.
COMMON_NAMES = {"lr": "learning_rate", "wd": "weight_decay", "bs": "batch_size", "temp": "temperature"}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: invalid value {value!r}")
    if tp is Any:
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (key: value), got {value!r}")
        return value
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (key: value), got {value!r}")
        return {_coerce(key_type, k, f"{key}"): _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}: write it in brackets, e.g. {key}=[{value}]")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value is False and "no" in allowed:
            value = "no"  # YAML 1.1 reads a bare `no` (mixed_precision: no) as false
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string; accept what Python reads as a number.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads yes/no/on/off/y/n as booleans
            raise ConfigError(f"{key}: expected text, got {value!r} (YAML reads yes, no, on and off as true or false): "
                              f"quote it, e.g. {key}='{'yes' if value else 'no'}'")
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected text, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")
