"""Run the SOLOv2 benchmark: the same code and options as ``solov2 benchmark``.

    python benchmarks/benchmark.py --config light_448_r18 --size 448x672 --json out.json

See docs/benchmark.md and benchmarks/NOTES.md for what it measures and the figures so far.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

from solov2.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["benchmark", *sys.argv[1:]]))
