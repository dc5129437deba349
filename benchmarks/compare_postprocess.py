"""Post-processing now against an earlier revision's, interleaved in one process.

    python benchmarks/compare_postprocess.py --rev e1569df --repeats 15

Loads ``solov2/model/postprocess.py`` as it was at ``--rev`` (read with ``git show``),
times both versions alternately on the benchmark's crafted load (``--candidates`` pairs above
the score threshold), checks that their results are identical, and prints the median times
and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solov2.config import load_config  # noqa: E402
from solov2.engine.benchmark import crafted_outputs  # noqa: E402
from solov2.model import postprocess as current_postprocess  # noqa: E402


def load_revision(rev: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:solov2/model/postprocess.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("postprocess_at_" + rev)
    module.__package__ = "solov2.model"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{rev}:solov2/model/postprocess.py", "exec"), module.__dict__)
    return module


def identical(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.masks, y.masks) and torch.equal(x.labels, y.labels) and torch.equal(x.scores, y.scores)
        for x, y in zip(a, b))


def random_cases(cfg, before: types.ModuleType, seeds: int) -> tuple[int, int]:
    """Both versions on varied inputs: sizes, 1 to 900 candidates, kernels scaled so that
    some masks are tiny or empty, both Matrix NMS kernels, small nms_pre / max_per_img.
    Returns (cases, cases with identical results)."""
    cases = same = 0
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        h, w = [(64, 96), (128, 96), (448, 672), (96, 160)][seed % 4]
        for candidates in (1, 2, 7, 60, 500, 900):
            logits, kernels, features, _ = crafted_outputs(cfg, 2, h, w, candidates, g)
            scale = (0.2, 1.0, 3.0)[seed % 3]
            kernels = [k * scale + torch.randn(1, generator=g) * 2 for k in kernels]
            for test in (cfg.test, dataclasses.replace(cfg.test, nms_kernel="linear"),
                         dataclasses.replace(cfg.test, max_per_img=5, nms_pre=20, update_thr=0.2)):
                call = (logits, kernels, features, [(h, w), (h - 13, w - 7)], [(h + 5, w + 9), (2 * h, w)],
                        cfg.model.grids, cfg.model.strides, test)
                with torch.inference_mode():
                    same += identical(before.postprocess(*call), current_postprocess(*call))
                cases += 1
    return cases, same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="e1569df", help="git revision to compare with (default: %(default)s)")
    parser.add_argument("--config", default="light_448_r18")
    parser.add_argument("--size", default="448x672")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--cases", type=int, default=0,
                        help="also compare results on 18 x CASES varied random inputs (default: %(default)s)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    cfg = load_config(args.config)
    before = load_revision(args.rev)
    logits, kernels, features, passing = crafted_outputs(cfg, 1, h, w, args.candidates,
                                                         torch.Generator().manual_seed(0))
    original = (round(h * 15 / 14), round(w * 15 / 14))
    call_args = (logits, kernels, features, [(h, w)], [original], cfg.model.grids, cfg.model.strides, cfg.test)
    versions = {args.rev: before.postprocess, "now": current_postprocess}
    with torch.inference_mode():
        results = {name: fn(*call_args) for name, fn in versions.items()}
        b = results["now"][0]
        same_here = identical(results[args.rev], results["now"])
        times: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(args.repeats):
            for name, fn in versions.items():
                start = time.perf_counter()
                fn(*call_args)
                times[name].append(time.perf_counter() - start)
    ratios = [x / y for x, y in zip(times["now"], times[args.rev])]
    print(f"post-processing, {args.config} {h}x{w}, {passing} candidates, {len(b)} instances returned, "
          f"original {original[0]}x{original[1]}, {args.repeats} interleaved rounds, "
          f"{torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"  {name:>10}: median {statistics.median(values) * 1e3:8.1f} ms   min {min(values) * 1e3:8.1f} ms")
    print(f"  now / {args.rev}: median per-round ratio {statistics.median(ratios):.3f}")
    print(f"  results identical: {same_here}")
    ok = same_here
    if args.cases:
        cases, same = random_cases(cfg, before, args.cases)
        print(f"  varied random inputs: identical results in {same} of {cases} cases")
        ok = ok and same == cases
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
