"""Post-processing now against earlier revisions', interleaved in one process.

    python benchmarks/compare_postprocess.py --revs e1569df f017d09 --load blobs --repeats 15

    python benchmarks/compare_postprocess.py --revs main --load noise --repeats 31 --threads 2

Loads ``solov2/model/postprocess.py`` as it was at each of ``--revs`` (read with ``git show``,
with the ``solov2/model`` modules it imports at that revision),
times them and the current version alternately on the benchmark's crafted load
(``--candidates`` pairs above the score threshold; ``--load blobs``: compact masks of
COCO-like sizes, ``--load noise``: the worst case, every mask spanning the image; see
``crafted_outputs``), compares the results with the last revision's, and prints the median
times and the median of the per-round ratios.

Agreement. Labels must be identical and scores within ``--score-tolerance`` (identical, unless
an image has so few candidates that the revision's mask product took MKL's path for small
products, rounded differently; the current version never takes it: ``fast_masks._product``). The final
masks may differ only at pixels where the revision's upsampled probability (its
``F.interpolate`` output, recorded) lies within ``--tolerance`` of mask_thr: the current version
resizes with exact-in-math matrices rounded differently (``fast_masks.resize_masks``).
The differing pixels are counted. To
measure differing pixels, the last revision must resize with ``F.interpolate``, as f017d09 and
earlier do (later ones build resize matrices with it); with a later one, differing pixels stop
the script with a message, and identical results and the timings are reported as usual.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solov2.config import load_config  # noqa: E402
from solov2.benchmark import POSTPROCESS_LOADS, crafted_outputs  # noqa: E402
from solov2.model import postprocess as current_postprocess  # noqa: E402
from solov2.model.fast_masks import ScoredMasks  # noqa: E402


class RecordingF(types.SimpleNamespace):
    """torch.nn.functional for a loaded revision, keeping every ``interpolate`` output."""

    def __init__(self) -> None:
        super().__init__(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__") and k != "interpolate"})
        self.outputs: list[torch.Tensor] = []
        self.recording = False

    def interpolate(self, *args, **kwargs):
        out = F.interpolate(*args, **kwargs)
        if self.recording:
            self.outputs.append(out)
        return out


def _exec_at(rev: str, name: str) -> types.ModuleType:
    """solov2/model/NAME.py as it was at ``rev``, as a new module (F: a ``RecordingF``). The
    modules it imports from the same package (``from .x import``) are also taken at ``rev``."""
    path = f"solov2/model/{name}.py"
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    siblings = {m: _exec_at(rev, m) for m in re.findall(r"^from \.(\w+) import", source, flags=re.M)}
    module = types.ModuleType(f"{name}_at_{rev}")
    module.__package__ = "solov2.model"
    sys.modules[module.__name__] = module
    with contextlib.ExitStack() as stack:
        for sibling, loaded in siblings.items():  # the relative imports find the revision's modules
            key = f"solov2.model.{sibling}"
            stack.callback(lambda k=key, v=sys.modules.get(key): sys.modules.__setitem__(k, v) if v
                           else sys.modules.pop(k, None))
            sys.modules[key] = loaded
        exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    module.F = RecordingF()
    return module


def load_revision(rev: str) -> types.ModuleType:
    """solov2/model/postprocess.py as it was at ``rev``, with the package modules it imports."""
    return _exec_at(rev, "postprocess")


@dataclasses.dataclass
class Agreement:
    same_labels: bool = True
    score_difference: float = 0.0  # largest |score difference|
    pixels: int = 0
    differing: int = 0
    max_distance: float = 0.0  # largest |reference probability - mask_thr| over differing pixels

    def add(self, other: "Agreement") -> None:
        self.same_labels &= other.same_labels
        self.score_difference = max(self.score_difference, other.score_difference)
        self.pixels += other.pixels
        self.differing += other.differing
        self.max_distance = max(self.max_distance, other.max_distance)

    def ok(self, tolerance: float, score_tolerance: float) -> bool:
        return (self.same_labels and self.score_difference <= score_tolerance
                and (self.differing == 0 or self.max_distance < tolerance))


def agreement(reference: types.ModuleType, call: tuple, mask_thr: float) -> Agreement:
    """The current version against ``reference`` on one call; the reference's final resizes
    (the second ``F.interpolate`` of each image with detections) give its probabilities."""
    reference.F.outputs.clear()
    reference.F.recording = True
    try:
        with torch.inference_mode():
            expected = reference.postprocess(*call)
            got = current_postprocess(*call)
    finally:
        reference.F.recording = False
    probs = iter(reference.F.outputs[1::2])
    result = Agreement(same_labels=len(expected) == len(got))
    for e, g in zip(expected, got):
        result.same_labels &= torch.equal(e.labels, g.labels) and e.masks.shape == g.masks.shape
        if not result.same_labels:
            result.score_difference = float("inf")
            continue
        if len(e) == 0:
            continue
        result.score_difference = max(result.score_difference, float((e.scores - g.scores).abs().max()))
        p = next(probs, None)  # none left when the revision caches its resize matrices
        differ = e.masks != g.masks
        result.pixels += differ.numel()
        result.differing += int(differ.sum())
        if differ.any():
            p = None if p is None else p.squeeze(0)
            if p is None or p.shape != e.masks.shape:
                raise SystemExit("masks differ, and the reference revision does not resize them with F.interpolate "
                                 f"(masks {tuple(e.masks.shape)}) to tell by how much: make the last of --revs "
                                 "f017d09 or earlier")
            result.max_distance = max(result.max_distance, float((p[differ] - mask_thr).abs().max()))
    return result


def kept_share(call: tuple) -> tuple[int, int]:
    """(returned masks whose probabilities score_masks kept, returned masks) on one call of the
    current version: the rest are recomputed."""
    counts = [0, 0]
    original = ScoredMasks.probabilities

    def counting(self: ScoredMasks, index: torch.Tensor, kernels: torch.Tensor, features: torch.Tensor):
        counts[0] += int((self.row_of[index] >= self.first_kept_row).sum())
        counts[1] += index.numel()
        return original(self, index, kernels, features)

    ScoredMasks.probabilities = counting
    try:
        with torch.inference_mode():
            current_postprocess(*call)
    finally:
        ScoredMasks.probabilities = original
    return counts[0], counts[1]


def random_cases(cfg, reference: types.ModuleType, seeds: int) -> tuple[int, Agreement]:
    """Both loads on varied inputs: sizes, 1 to 900 candidates, kernels scaled so that some
    masks are tiny or empty, both Matrix NMS kernels, small nms_pre / max_per_img; original
    sizes larger, smaller and odd. Returns (cases, summed agreement)."""
    cases, total = 0, Agreement()
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        h, w = [(64, 96), (128, 96), (448, 672), (96, 160)][seed % 4]
        for load in ("blobs", "noise"):
            for candidates in (1, 2, 7, 60, 500, 900):
                logits, kernels, features, _ = crafted_outputs(cfg, 2, h, w, candidates, g, load)
                if load == "noise":
                    scale = (0.2, 1.0, 3.0)[seed % 3]
                    kernels = [k * scale + torch.randn(1, generator=g) * 2 for k in kernels]
                for test in (cfg.test, dataclasses.replace(cfg.test, nms_kernel="linear"),
                             dataclasses.replace(cfg.test, max_per_img=5, nms_pre=20, update_thr=0.2)):
                    originals = [(h + 5, w + 9), (2 * h - 1, w // 2 + 1)]  # up; odd, up in y and down in x
                    call = (logits, kernels, features, [(h, w), (h - 13, w - 7)], originals,
                            cfg.model.grids, cfg.model.strides, test)
                    total.add(agreement(reference, call, test.mask_thr))
                    cases += 1
    return cases, total


def describe(a: Agreement) -> str:
    masks = f"{a.differing} of {a.pixels} mask pixels differ"
    if a.differing:
        masks += f", all within {a.max_distance:.2e} of mask_thr"
    scores = "identical" if a.score_difference == 0 else f"differ by up to {a.score_difference:.2e}"
    return f"labels identical: {a.same_labels}; scores {scores}; {masks}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revs", nargs="+", default=["e1569df", "f017d09"],
                        help="git revisions to time; results are compared with the last (default: %(default)s)")
    parser.add_argument("--config", default="light_448_r18")
    parser.add_argument("--size", default="448x672")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: %(default)s)")
    parser.add_argument("--load", default="blobs", choices=POSTPROCESS_LOADS,
                        help="crafted masks (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="a mask pixel may differ only where the reference probability is this close to mask_thr")
    parser.add_argument("--score-tolerance", type=float, default=1e-5,
                        help="largest score difference allowed (default: %(default)s)")
    parser.add_argument("--cases", type=int, default=0,
                        help="also compare results on 36 x CASES varied random inputs (default: %(default)s)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    cfg = load_config(args.config)
    revisions = {rev: load_revision(rev) for rev in args.revs}
    reference = revisions[args.revs[-1]]
    logits, kernels, features, passing = crafted_outputs(cfg, args.batch, h, w, args.candidates,
                                                         torch.Generator().manual_seed(0), args.load)
    original = (round(h * 15 / 14), round(w * 15 / 14))
    call_args = (logits, kernels, features, [(h, w)] * args.batch, [original] * args.batch, cfg.model.grids,
                 cfg.model.strides, cfg.test)
    versions = {rev: module.postprocess for rev, module in revisions.items()}
    versions["now"] = current_postprocess
    here = agreement(reference, call_args, cfg.test.mask_thr)
    with torch.inference_mode():
        returned = [len(d) for d in current_postprocess(*call_args)]
        times: dict[str, list[float]] = {name: [] for name in versions}
        for _ in range(args.repeats):
            for name, fn in versions.items():
                start = time.perf_counter()
                fn(*call_args)
                times[name].append(time.perf_counter() - start)
    print(f"post-processing, {args.config} {h}x{w}, batch {args.batch}, {args.load} load, {passing} candidates per "
          f"image, {returned} instances returned, original {original[0]}x{original[1]}, {args.repeats} interleaved rounds, "
          f"{torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"  {name:>10}: median {statistics.median(values) * 1e3:8.1f} ms   min {min(values) * 1e3:8.1f} ms")
    for rev in args.revs:
        ratios = [x / y for x, y in zip(times["now"], times[rev])]
        print(f"  now / {rev}: median per-round ratio {statistics.median(ratios):.3f}")
    print(f"  now vs {args.revs[-1]}: {describe(here)}")
    kept, returned_total = kept_share(call_args)
    print(f"  returned masks whose probabilities were kept from scoring (not recomputed): {kept} of {returned_total}")
    ok = here.ok(args.tolerance, args.score_tolerance)
    if args.cases:
        cases, total = random_cases(cfg, reference, args.cases)
        print(f"  varied random inputs, {cases} cases, now vs {args.revs[-1]}: {describe(total)}")
        ok = ok and total.ok(args.tolerance, args.score_tolerance)
    print(f"  agreement within tolerances (pixels {args.tolerance:g}, scores {args.score_tolerance:g}): {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
