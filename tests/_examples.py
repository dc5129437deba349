"""The example commands of the README, docs/*.md and every ``--help`` text, as written there.

``all_examples()`` maps each example's text (``\\`` continuations joined, the ``#`` comment
after it dropped, spaces collapsed) to the places it appears (``README.md:62``,
``solov2 eval --help``); tests/test_examples.py checks each against its table. ``shell_argv``
splits an example as bash would, expanding unquoted globs in the current folder.
"""

from __future__ import annotations

import argparse
import glob
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The first word of a line that is a command: what the docs and help texts run.
COMMAND_WORDS = ("solov2", "solov2-runtime", "torchrun", "python", "make", "pip")
# Fenced blocks in these languages hold code or output, not shell commands.
NOT_SHELL = {"python", "json", "cpp", "text", "yaml"}
# "then: solov2 ..." / "predict with: solov2 ...": a command inside a help text's prose.
PROSE_COMMAND = re.compile(r"(?:^|\s)(?:then|with): (solov2\S* [^(]*?)\s*(?:\(.*)?$")


def strip_comment(line: str) -> str:
    """``line`` without a shell comment (a ``#`` after a space, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Logical lines: a line ending in ``\\`` goes on with the next; (first line number, text)."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in lines:
        text = raw.rstrip()
        start, before = pending if pending else (number, "")
        if text.endswith("\\"):
            pending = (start, before + " " + text[:-1])
            continue
        pending = None
        joined.append((start, before + " " + text))
    if pending:
        joined.append(pending)
    return [(number, " ".join(strip_comment(text).split())) for number, text in joined]


def commands_in(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The logical lines of ``lines`` that start with a command word."""
    return [(n, text) for n, text in join_continuations(lines) if text.split(" ", 1)[0] in COMMAND_WORDS]


MARKDOWN_FILES = ("README.md", "docs/*.md", "runtime/README.md")  # where the docs' examples are


def fenced_blocks(path: Path) -> list[tuple[str, list[tuple[int, str]]]]:
    """(language, [(line number, line)]) of each fenced block of a Markdown file."""
    blocks, block, language = [], None, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if block is None:
                block, language = [], line[3:].strip().lower()
            else:
                blocks.append((language, block))
                block = None
            continue
        if block is not None:
            block.append((number, line))
    return blocks


def markdown_files() -> list[Path]:
    return [path for pattern in MARKDOWN_FILES for path in sorted(ROOT.glob(pattern))]


def markdown_examples(path: Path) -> list[tuple[str, str]]:
    """(place, command) of the commands in the fenced shell blocks of a Markdown file."""
    return [(f"{path.relative_to(ROOT)}:{n}", text) for language, block in fenced_blocks(path)
            if language not in NOT_SHELL for n, text in commands_in(block)]


def python_examples() -> dict[tuple[str, str], str]:
    """(file, first code line) -> the code of each fenced ``python`` block of the docs."""
    found = {}
    for path in markdown_files():
        for language, block in fenced_blocks(path):
            if language == "python":
                code = "\n".join(line for _, line in block)
                first = next(line for _, line in block if line.strip())
                found[(str(path.relative_to(ROOT)), first)] = code
    return found


def help_examples(name: str, parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(place, command) of the commands in ``parser``'s epilog (printed as written after the
    options by --help): lines starting with a command word, and "then: solov2 ..." in prose."""
    lines = list(enumerate((parser.epilog or "").splitlines(), 1))
    found = [(f"{name} --help", text) for _, text in commands_in(lines)]
    for _, line in lines:
        match = PROSE_COMMAND.search(line)
        if match:
            found.append((f"{name} --help", " ".join(match.group(1).split())))
    return found


def help_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser whose --help a user can print: ``solov2``, each subcommand, the runtime's."""
    from solov2.cli import build_parser
    from solov2_runtime.cli import build_parser as runtime_parser

    parsers: dict[str, argparse.ArgumentParser] = {}
    for prog, parser in (("solov2", build_parser()), ("solov2-runtime", runtime_parser())):
        parsers[prog] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.update({f"{prog} {sub}": p for sub, p in action.choices.items()})
    return parsers


def all_examples() -> dict[str, list[str]]:
    """Every example command -> the places it is written, README, docs/*.md and --help texts."""
    pairs = [pair for path in markdown_files() for pair in markdown_examples(path)]
    for name, parser in help_parsers().items():
        pairs += help_examples(name, parser)
    examples: dict[str, list[str]] = {}
    for place, text in pairs:
        examples.setdefault(text, []).append(place)
    return examples


def shell_argv(text: str) -> list[str]:
    """``text`` split as bash splits it: quotes removed, unquoted globs expanded in the current
    folder (kept as written when nothing matches, as bash does)."""
    argv = []
    for raw in shlex.split(text, posix=False):
        word = shlex.split(raw)[0] if raw.strip("'\"") != "" else ""
        quoted = any(q in raw for q in "'\"")
        matches = [] if quoted or not any(c in raw for c in "*?[") else sorted(glob.glob(raw, recursive=False))
        argv += matches or [word]
    return argv
