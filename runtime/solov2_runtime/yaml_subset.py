"""Reading the YAML that ``solov2 export`` stores in a model's metadata, without PyYAML.

The config is written by ``yaml.safe_dump`` (block style): nested mappings, block sequences
(``- item``, ``- - item`` for lists of lists), empty ``[]`` / ``{}``, plain, single- and
double-quoted scalars, long quoted scalars folded over several lines. ``parse_yaml`` reads
that subset and resolves scalars as PyYAML's safe loader does (ints, floats, ``.inf``,
``.nan``, ``true``/``false``, ``null``); anything else raises ``ValueError``. Flow sequences of
scalars (``[320, 192]``) are read too, for command-line overrides.
"""

from __future__ import annotations

import codecs
import math
import re
from typing import Any

_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)$")
_FLOAT = re.compile(r"[-+]?([0-9][0-9_]*\.[0-9_]*|\.[0-9_]+)([eE][-+][0-9]+)?$")  # YAML 1.1: a dot
_SPECIAL = {"null": None, "~": None, "": None, "true": True, "True": True, "TRUE": True,
            "false": False, "False": False, "FALSE": False, ".inf": math.inf, "+.inf": math.inf,
            "-.inf": -math.inf, ".nan": math.nan, ".NaN": math.nan, "[]": [], "{}": {}}


def scalar(text: str) -> Any:
    """One scalar (plain, quoted) or flow sequence of scalars, resolved as PyYAML's safe loader."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return codecs.decode(text[1:-1].encode("latin-1", "backslashreplace"), "unicode_escape")
    if text in _SPECIAL:
        value = _SPECIAL[text]
        return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
    if text.startswith("[") and text.endswith("]"):
        return [scalar(item) for item in text[1:-1].split(",")]
    if _INT.match(text):
        return int(text.replace("_", ""))
    if _FLOAT.match(text):
        return float(text.replace("_", ""))
    if text[0] in "'\"{[&*!|>%@`":
        raise ValueError(f"unsupported YAML value {text!r}")
    return text


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


class _Lines:
    def __init__(self, text: str):
        self.lines = [line.rstrip() for line in text.splitlines()
                      if line.strip() and not line.lstrip().startswith("#") and line.strip() != "---"]
        self.pos = 0

    def peek(self) -> tuple[int, str] | None:
        if self.pos >= len(self.lines):
            return None
        line = self.lines[self.pos]
        return _indent(line), line.strip()

    def folded(self, first: str, indent: int) -> str:
        """``first`` joined with the following lines indented more than ``indent`` (folding)."""
        parts = [first.strip()]
        while (nxt := self.peek()) is not None and nxt[0] > indent:
            parts.append(nxt[1])
            self.pos += 1
        return " ".join(parts)


def _node(lines: _Lines, indent: int) -> Any:
    """The block node whose first line is at ``indent``."""
    head = lines.peek()
    if head is None:
        return None
    if head[1] == "-" or head[1].startswith("- "):
        return _sequence(lines, head[0])
    return _mapping(lines, head[0])


def _item(lines: _Lines, text: str, indent: int) -> Any:
    """The value written after ``key:`` or ``-`` at ``indent`` (``text`` may be empty)."""
    if text:
        return scalar(lines.folded(text, indent))
    nxt = lines.peek()
    if nxt is None or nxt[0] < indent or (nxt[0] == indent and not nxt[1].startswith("-")):
        return None
    return _node(lines, nxt[0])


def _sequence(lines: _Lines, indent: int) -> list[Any]:
    out: list[Any] = []
    while (head := lines.peek()) is not None and head[0] == indent and (head[1] == "-" or head[1].startswith("- ")):
        rest = head[1][1:].lstrip(" ")
        if rest.startswith("- ") or rest == "-" or (": " in rest or rest.endswith(":")) and rest[0] not in "'\"":
            # An inline nested node ("- - 1", "- key: v"): rewrite the line as its own block.
            inner = indent + len(head[1]) - len(rest)
            lines.lines[lines.pos] = " " * inner + rest
            out.append(_node(lines, inner))
            continue
        lines.pos += 1
        out.append(_item(lines, rest, indent))
    return out


def _mapping(lines: _Lines, indent: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    while (head := lines.peek()) is not None and head[0] == indent:
        key, sep, rest = head[1].partition(":")
        if not sep or (rest and not rest.startswith(" ")):
            raise ValueError(f"unsupported YAML line {head[1]!r}")
        lines.pos += 1
        out[scalar(key) if key[:1] in "'\"" else key] = _item(lines, rest.strip(), indent)
    return out


def parse_yaml(text: str) -> Any:
    """The document ``text`` (the block-style subset above) as Python objects."""
    lines = _Lines(text)
    value = _node(lines, 0)
    if lines.peek() is not None:
        raise ValueError(f"unexpected YAML line {lines.peek()[1]!r}")
    return value
