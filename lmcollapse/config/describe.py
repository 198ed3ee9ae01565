"""The resolved config with every key documented (``lmcollapse config``, ``make config``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
from typing import Any

import yaml

from lmcollapse.config.pipeline_config import PipelineConfig


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass, keyed by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def describe_config(config: PipelineConfig) -> str:
    """The resolved config as YAML with each field's documentation as a comment above it."""
    lines: list[str] = []

    def walk(obj: Any, indent: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name in docs:
                lines.extend(f"{indent}# {line}" for line in textwrap.wrap(docs[f.name], 96 - len(indent)))
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                walk(value, indent + "  ")
            else:
                dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()
                lines.append(f"{indent}{dumped.strip('{}')}")
    walk(config, "")
    return "\n".join(lines) + "\n"
