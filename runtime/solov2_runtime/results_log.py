"""The predict job's results file, written as the job goes so that no finished input is lost.

While the job runs, each input's records are appended to ``results.jsonl`` (one JSON record a
line) and flushed as soon as that input is done. When the job ends, normally, on Ctrl-C or
on an error, ``results.json`` (one JSON list, what ``COCO.loadRes`` reads) is assembled from
those lines, atomically, and the lines file removed. When the process is killed outright
(``kill -9``, power loss) ``results.jsonl`` stays and holds the records of every input done;
``assemble_results`` (``python -m solov2_runtime.results_log OUT``) turns it into ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Iterable, Sequence

from .atomic import atomic_open

LINES_NAME = "results.jsonl"
RESULTS_NAME = "results.json"


def assemble_results(lines_file: str | Path, results_file: str | Path) -> int:
    """Write the records of ``lines_file`` (JSON lines) to ``results_file`` as one JSON list,
    atomically, streaming (the records are never all in memory); returns how many.

    A last line cut short (the process was killed while writing it) is left out; any other
    line that is not JSON raises ``ValueError`` naming the file and line."""
    count = 0
    with open(lines_file, encoding="utf-8") as lines, atomic_open(results_file, "w") as out:
        out.write("[")
        pending = None
        for number, line in enumerate(lines, 1):
            if pending is not None:
                raise ValueError(f"{lines_file}: line {pending} is not a JSON record")
            text = line.strip()
            if not text:
                continue
            try:
                json.loads(text)
            except json.JSONDecodeError:
                pending = number
                continue
            out.write((",\n" if count else "\n") + text)
            count += 1
        out.write("\n]\n")
    return count


def finish(lines_file: Path, results_file: Path) -> int:
    """``assemble_results``, then remove ``lines_file``; returns the record count. When
    assembling fails (e.g. the disk is full) the lines file stays and the error propagates."""
    count = assemble_results(lines_file, results_file)
    lines_file.unlink()
    return count


class ResultsLog:
    """``results.jsonl`` in ``out_dir`` while the job runs; ``close`` makes ``results.json``."""

    def __init__(self, out_dir: Path):
        self.lines_file = out_dir / LINES_NAME
        self.results_file = out_dir / RESULTS_NAME
        self._lines: IO[str] | None = open(self.lines_file, "w", encoding="utf-8")

    def add(self, records: Iterable[dict]) -> None:
        """Append one input's records and flush them to the file."""
        assert self._lines is not None, "the results log is closed"
        self._lines.write("".join(json.dumps(record) + "\n" for record in records))
        self._lines.flush()

    def close(self) -> None:
        """``finish``: ``results.json`` from the lines written so far, the lines file removed.
        When that fails the lines file stays, whole up to its last flushed input."""
        if self._lines is not None:
            self._lines.close()
            self._lines = None
        finish(self.lines_file, self.results_file)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m solov2_runtime.results_log OUT``: assemble the results of a killed job."""
    parser = argparse.ArgumentParser(
        prog="python -m solov2_runtime.results_log",
        description="Make OUT/results.json from the OUT/results.jsonl that a predict job killed "
                    "outright (kill -9, power loss) left: the records of every input it finished.")
    parser.add_argument("out", help="the predict job's output folder")
    out = Path(parser.parse_args(argv).out)
    lines_file = out / LINES_NAME
    if not lines_file.is_file():
        done = " (results.json is there: the job ended and assembled it)" if (out / RESULTS_NAME).is_file() else ""
        print(f"error: {lines_file}: not found{done}", file=sys.stderr)
        return 2
    try:
        count = finish(lines_file, out / RESULTS_NAME)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, an unwritable folder: the lines stay as they are
        print(f"error: {out / RESULTS_NAME}: {err.strerror or err}; {lines_file} is kept", file=sys.stderr)
        return 2
    print(f"{out / RESULTS_NAME}: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
