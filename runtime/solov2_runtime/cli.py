"""``solov2-runtime``: the command line of the PyTorch-free runtime."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .outputs import OutputDirError, add_exist_ok, prepare_out_dir, run_dir
from .predict_files import BatchPredictor, PredictInterrupted, predict_files
from .results_log import LINES_NAME, RESULTS_NAME
from .predict_options import OptionError, add_shortcut_arguments, check_onnx_model, shortcut_overrides, with_shortcuts
from .settings import SettingsError
from .sources import collect_sources

EXIT_INTERRUPTED = 130

EXAMPLES = """examples:
  solov2-runtime predict model.onnx photos/ clip.mp4 --out runs/predict
  solov2-runtime predict model.onnx 'shots/**/*.png' test.score_thr=0.3 --save-masks
  solov2-runtime predict model.onnx clip.mp4 --frame-stride 5 --threads 4
  solov2-runtime predict model.onnx photos/ --conf 0.3 --classes person,car --imgsz 640

"""

OUTPUTS_HELP = """outputs in --out (runs/predict2, 3, ... when it holds an earlier run; --exist-ok reuses it):
one overlay per image (PNG for PNG inputs, else JPEG; a folder's or glob's structure kept),
an annotated .mp4 per video, results.json (COCO-style records with RLE masks of every
instance kept after Matrix NMS, scores >= test.update_thr; video records carry a "frame"
index; written on Ctrl-C too, for the inputs done; while the job runs, results.jsonl holds
them one a line, what a killed job leaves: python -m solov2_runtime.results_log OUT makes
results.json of it) and, with --save-masks, one PNG per
instance scored >= --show-thr under masks/. Exit code 0: all inputs predicted; 1: some
inputs failed (listed on stderr); 2: nothing could be predicted (bad model, bad option, no
readable input, unwritable --out); 130: interrupted (results.json holds the inputs done).
"""


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``solov2-runtime predict`` and ``solov2 predict`` share."""
    parser.add_argument("--out", default="runs/predict", help="output folder (default: %(default)s)")
    add_exist_ok(parser)
    add_shortcut_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--frame-stride", type=int, default=1, help="process every N-th video frame")
    parser.add_argument("--save-masks", action="store_true", help="also write one PNG per instance (under masks/)")
    parser.add_argument("--no-overlays", action="store_true", help="write results.json only")
    parser.add_argument("--show-thr", type=float, default=0.3,
                        help="draw (and with --save-masks save) instances scored at least this; "
                             "results.json keeps all (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM stops the job as Ctrl-C does (results kept; main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_predict(args: argparse.Namespace, inputs: Sequence[str],
                build: Callable[[], BatchPredictor], errors: tuple[type[Exception], ...]) -> int:
    """Collect ``inputs``, check ``--out``, build the predictor (``errors`` it raises are
    reported), predict into a new run folder, print the summary; returns the exit code (0, 1
    if some inputs failed, 2 if none could run, 130 on Ctrl-C or SIGTERM with results.json written)."""
    if args.frame_stride < 1 or args.batch_size < 1:
        return fail("--frame-stride and --batch-size must be at least 1")
    sources, problems = collect_sources(list(inputs))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not sources:
        return fail("nothing to predict: no readable image or video among the inputs")
    out = run_dir(args.out, args.exist_ok)
    try:
        prepare_out_dir(out)
        shortcut_overrides(args)  # checks their values before the model loads
        predictor = with_shortcuts(build(), args)
    except (OutputDirError, OptionError, *errors) as err:
        return fail(str(err))
    try:
        with sigterm_as_interrupt():
            summary = predict_files(predictor, sources, out, save_masks=args.save_masks,
                                    save_overlays=not args.no_overlays, frame_stride=args.frame_stride,
                                    batch_size=args.batch_size, show_thr=args.show_thr,
                                    progress=not args.quiet)
    except PredictInterrupted as stop:
        print(stop, file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        return fail(f"cannot write the outputs: {err}; {kept_results(out)} holds the inputs done")
    except Exception as err:  # a failing model or backend: the inputs done are kept
        return fail(f"prediction stopped ({type(err).__name__}: {err}); {kept_results(out)} holds "
                    "the inputs done")
    return report(summary, problems, predictor, args.no_overlays)


def kept_results(out: Path) -> Path:
    """The results file a stopped job left: results.json, or the lines it could not assemble."""
    assembled = out / RESULTS_NAME
    return assembled if assembled.is_file() else out / LINES_NAME


def report(summary, problems: list[str], predictor: BatchPredictor, no_overlays: bool) -> int:
    """Print what a predict job did; the exit code (1 when some inputs failed)."""
    failures = problems + summary.failures
    print(f"predicted {summary.images} images and {summary.frames} frames of {summary.videos} videos: "
          f"{summary.instances} instances")
    if summary.empty:
        print(summary.empty_line(*predictor.score_thresholds()))
    print(f"results: {summary.results_file}")
    if not no_overlays:
        print(f"overlays: {summary.out_dir}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solov2-runtime", description="SOLOv2 models exported to "
                                     "ONNX, run with ONNX Runtime and NumPy (no PyTorch)",
                                     epilog=EXAMPLES.split("\n\n")[0] + "\n\nRun 'solov2-runtime predict "
                                     "--help' for the options.", formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="segment images, folders and videos",
        description="Instance masks for images, folders, globs and videos with an exported model.",
        epilog=EXAMPLES + OUTPUTS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("model", help=".onnx file written by 'solov2 export'")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files, folders (searched recursively), glob patterns, video files; "
                              "KEY=VALUE items are overrides of test.* and input.* settings")
    add_output_arguments(predict)
    predict.add_argument("--threads", type=int, default=0,
                         help="ONNX Runtime intra-op threads (default: 0, its own choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may follow options; collect them wherever they stand.
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from .runtime import ModelError, Runtime

    overrides = [item for item in args.inputs if "=" in item] + extra
    inputs = [item for item in args.inputs if "=" not in item]

    def build() -> Runtime:
        check_onnx_model(args.model)
        return Runtime(args.model, overrides=overrides + shortcut_overrides(args), batch_size=args.batch_size,
                       num_threads=args.threads)

    try:
        return run_predict(args, inputs, build, (ModelError, SettingsError, ImportError))
    except KeyboardInterrupt:  # before or after the job (the job itself reports its own)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
