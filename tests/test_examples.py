"""Every example command in the README, docs/*.md and the --help texts works as written.

``EXAMPLES`` below says how each example is checked; a test fails when an example has no entry
(a new example needs one) and when an entry matches no example (a stale one). The examples run
in one sandbox folder (tests/_example_sandbox.py writes the stand-in files they name), in the
table's order, each after the examples it ``needs``, in-process through ``solov2.cli.main`` /
``solov2_runtime.cli.main`` with the argv bash would pass. How:

- ``run()``: as written; exit code 0 and the files the docs promise (``outputs``, written
  by this run) exist.
- ``short(extra)``: as written plus only the appended ``extra`` options, which shorten it (later
  options win in argparse, so ``--max-iters 1`` cuts a schedule); ``fill`` replaces the docs'
  ``...`` / ``IMAGES`` placeholders with the surrounding example's values.
- ``parse(why)``: cannot run here (CUDA, several GPUs or machines, hours, torch.compile): the
  command line parses (torchrun's options with torchrun's own parser) and its config and
  overrides load and validate.
- ``ci(file, text, why)``: a ``make``/``pip`` line that .ci/run runs; ``file`` holds ``text``.
"""

from __future__ import annotations

import argparse
import runpy
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from _examples import ROOT, all_examples, help_parsers, shell_argv


@dataclass(frozen=True)
class Check:
    how: str  # run | short | parse | ci
    extra: tuple[str, ...] = ()  # appended shortening options (short)
    fill: dict[str, str] = field(default_factory=dict)  # placeholder word -> its replacement
    outputs: tuple[str, ...] = ()  # globs in the sandbox; each must match a file this run wrote
    needs: tuple[str, ...] = ()  # examples whose outputs this one reads, run first
    why: str = ""  # why not as written (short, parse, ci)
    where: tuple[str, str] = ("", "")  # ci: (file, text it holds)
    openvino: bool = False  # loads OpenVINO: runs in make test's second process
    before: str = ""  # a stand-in step before the run, named in STAND_INS


def run(*outputs: str, needs: tuple[str, ...] = (), openvino: bool = False, before: str = "") -> Check:
    return Check("run", outputs=outputs, needs=needs, openvino=openvino, before=before)


def short(extra: str, *outputs: str, why: str, fill: dict[str, str] | None = None,
          needs: tuple[str, ...] = (), openvino: bool = False, before: str = "") -> Check:
    return Check("short", tuple(extra.split()), fill or {}, outputs, needs, why, openvino=openvino, before=before)


def parse(why: str, fill: dict[str, str] | None = None) -> Check:
    return Check("parse", fill=fill or {}, why=why)


def ci(file: str, text: str, why: str) -> Check:
    return Check("ci", why=why, where=(file, text))


TRAIN_DATA = {"...": "data.train_ann=ann/train.json data.train_images=img/train",
              "data.train_ann=...": "data.train_ann=ann/train.json",
              "data.train_images=...": "data.train_images=img/train"}
ONE_ITER = "--max-iters 1 input.train_scales=[[256,160]]"
WHY_ITER = "a 36-epoch schedule: one iteration, at a small training scale"
# Benchmarks time full-size passes for minutes: one round at a small size, the same sections.
BENCH = "--size 64x96 --batch 1 --repeats 1 --warmup 0 --candidates 20 --instances 2"
WHY_BENCH = "minutes of timing at full size: one round at 64x96"
DEMO = "--train 16 --val 2 --overlays 1 --quiet train.epochs=2 train.lr_steps=[1]"
WHY_DEMO = "minutes (1200 images, 8 epochs): 16 images, 2 epochs"
INT8 = "--height 64 --width 96"
WHY_INT8 = "INT8 calibration traced at 448x672 takes half a minute: traced at 64x96 (the graph is dynamic)"
PREDICT = "runs/predict*/results.json"
EXP1 = "solov2 train --config light_448_r18 data.train_ann=ann/train.json data.train_images=img/train " \
       "data.val_ann=ann/val.json data.val_images=img/val --work-dir runs/exp1"
EXPORT_W = "solov2 export --config light_448_r18 --weights W.pth --out model.onnx"
INT8_W = "solov2 export --weights W.pth --out model.onnx --int8 --calibration-images val2017/"
EVAL_W = "solov2 eval --config light_448_r18 --weights W.pth --ann val.json --images val2017/ --out runs/eval"
DEMO_RUN = "solov2 demo --out runs/demo"
SHAPES = "solov2 make-shapes --out data/shapes"
SHAPES_SMALL = "solov2 make-shapes --out data/shapes --train 1000 --val 200 --seed 7 --size 320x240"
SHAPES_TRAIN = "solov2 train --config demo_shapes data.train_ann=data/shapes/train.json " \
               "data.train_images=data/shapes/train data.val_ann=data/shapes/val.json data.val_images=data/shapes/val"
RESUME = "solov2 train --resume runs/exp1"
CONVERT = "solov2 convert SOLOv2_LIGHT_448_R18_3x.pth solov2_light_448_r18.pth --config light_448_r18"
CUDA = "needs a CUDA device"
OV_BACKENDS = "pytorch,onnxruntime,openvino,onnxruntime-int8,openvino-int8"


def _copy_latest_as_epoch_12(sandbox: Path) -> None:
    shutil.copy(sandbox / "runs/exp1/latest.pth", sandbox / "runs/exp1/epoch_12.pth")


def _move_exp1_aside(sandbox: Path) -> None:
    target = sandbox / "runs/exp1"
    if target.exists():
        target.rename(sandbox / f"runs/exp1-moved-{len(list(sandbox.glob('runs/exp1-moved-*')))}")


# Stand-ins made from earlier examples' outputs, under the names an example reads.
STAND_INS = {"epoch_12": _copy_latest_as_epoch_12, "fresh_exp1": _move_exp1_aside}
WHY_FRESH = ("; an alternative to the first runs/exp1 training, which a new run refuses to overwrite: "
             "runs in a fresh runs/exp1 (the earlier one moved aside)")

EXAMPLES: dict[str, Check] = {
    # setup and CI
    "make demo": ci("Makefile", "$(BIN)/solov2 demo --out runs/demo",
                    "runs `solov2 demo --out runs/demo`, checked below (shortened)"),
    "make test": ci(".ci/run", "make test", "run by .ci/run"),
    "make install": ci("Makefile", "test: $(STAMP)", "make test, run by .ci/run, installs first"),
    "pip install ./runtime": ci("Makefile", "pip install -q ./runtime", "run by make runtime-check in .ci/run"),
    # data
    "solov2 make-shapes --out data/shapes --train 200 --val 50 --seed 0": run("data/shapes/train.json"),
    SHAPES: run("data/shapes/train.json", "data/shapes/val/*.png"),
    SHAPES_SMALL: short("--train 8 --val 4", "data/shapes/val.json", why="1200 images: 12"),
    # weights
    CONVERT: run("solov2_light_448_r18.pth"),
    "solov2 convert SOLOv2_LIGHT_448_R18_3x.pth light_448_r18.pth --config light_448_r18": run("light_448_r18.pth"),
    "solov2 convert solov2_r50_fpn_3x_coco.pth r50_3x.pth --config r50_3x": run("r50_3x.pth"),
    "solov2 convert solov2_448_r18_epoch_36.pth r18.pth test.score_thr=0.3 --config light_448_r18": run("r18.pth"),
    "solov2 convert SOLOv2_R101_3x.pth r101.pth": run("r101.pth"),
    "solov2 predict photo.jpg --weights solov2_light_448_r18.pth": run(PREDICT, needs=(CONVERT,)),
    # training
    EXP1: short(ONE_ITER, *(f"runs/exp1/{f}" for f in ("config.yaml", "train.log", "metrics.jsonl", "latest.pth",
                                                       "best.pth", "final.pth", "epoch_1.pth")), why=WHY_ITER),
    RESUME: short("--max-iters 2", "runs/exp1/latest.pth", why="resumes the 36-epoch schedule: to iteration 2",
                  needs=(EXP1,)),
    "solov2 train --resume runs/exp1/epoch_12.pth": short(
        "--max-iters 3", "runs/exp1/latest.pth", needs=(RESUME,), before="epoch_12",
        why="runs/exp1/epoch_12.pth is a copy of runs/exp1/latest.pth (12 epochs take hours); to iteration 3"),
    "solov2 train --resume runs/exp1 data.workers=8": short(
        "--max-iters 4", "runs/exp1/latest.pth", why="to iteration 4",
        needs=("solov2 train --resume runs/exp1/epoch_12.pth",)),
    "solov2 train --config light_448_r18 data.train_ann=ann/train.json data.train_images=img/train "
    "data.val_ann=ann/val.json data.val_images=img/val --backbone-weights resnet18-f37072fd.pth "
    "--work-dir runs/exp1": short(ONE_ITER, "runs/exp1/final.pth", why=WHY_ITER + WHY_FRESH, before="fresh_exp1",
                                  needs=("solov2 train --resume runs/exp1 data.workers=8",)),
    "solov2 train --config light_448_r18 --backbone-weights resnet18-f37072fd.pth ... --work-dir runs/exp1": short(
        ONE_ITER, "runs/exp1/final.pth", why=WHY_ITER + WHY_FRESH, fill=TRAIN_DATA, before="fresh_exp1",
        needs=("solov2 train --resume runs/exp1 data.workers=8",)),
    "solov2 train --config light_448_r18 --load-from SOLOv2_LIGHT_448_R18_3x.pth ...": short(
        ONE_ITER, "runs/light_448_r18/final.pth", why=WHY_ITER, fill=TRAIN_DATA),
    "solov2 train --config light_448_r18 --load-from SOLOv2_LIGHT_448_R18_3x.pth ... --work-dir runs/ft": short(
        ONE_ITER, "runs/ft/final.pth", why=WHY_ITER, fill=TRAIN_DATA),
    "solov2 train --config light_448_r18 data.train_ann=... data.train_images=... "
    '"input.train_scales=[[512, 320]]" --max-iters 20 --device cpu --work-dir runs/smoke': short(
        ONE_ITER, "runs/smoke/final.pth", why="20 iterations: 1", fill=TRAIN_DATA),
    SHAPES_TRAIN: short("--max-iters 1", "runs/demo_shapes/final.pth", why="an 8-epoch schedule: one iteration",
                        needs=(SHAPES_SMALL,)),
    "torchrun --nproc_per_node 8 -m solov2 train --config r50_3x ...": parse("8 GPUs", TRAIN_DATA),
    "torchrun --nproc_per_node 8 -m solov2 train --config r50_3x ... --work-dir runs/r50": parse("8 GPUs", TRAIN_DATA),
    "torchrun --nproc_per_node 8 -m solov2 train --config r50_3x data.train_ann=... data.train_images=... "
    "--work-dir runs/r50": parse("8 GPUs", TRAIN_DATA),
    "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr 10.0.0.1 --master_port 29500 -m solov2 "
    "train --config r50_3x ... --work-dir runs/r50": parse("two machines with 8 GPUs", TRAIN_DATA),
    # inspect
    "solov2 inspect --config light_448_r18 --ann train.json --images train/ --out runs/inspect": run(
        "runs/inspect*/report.json", "runs/inspect*/report.html", "runs/inspect*/sizes.png"),
    'solov2 inspect --config my.yaml --ann train.json --images train/ "model.scale_ranges=[[1, 64], [32, 128], '
    '[64, 256], [128, 512], [256, 2048]]"': run("runs/inspect*/report.json"),
    "solov2 inspect --config r50_3x --ann train.json --images train/ --all-scales --read-images": run(
        "runs/inspect*/report.json"),
    # predict
    "solov2 predict photos/ street.mp4 img.jpg --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth "
    "--out runs/predict": run(PREDICT, "runs/predict*/street.mp4", "runs/predict*/img.jpg",
        "runs/predict*/photos/chelsea.jpg"),
    "solov2 predict photos/ --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth --out runs/predict": run(
        PREDICT, "runs/predict*/photos/chelsea.jpg"),
    "solov2 predict 'shots/**/*.png' --weights runs/exp1/final.pth --save-masks": run(
        PREDICT, "runs/predict*/shots/day1/a.png", needs=(EXP1,)),
    "solov2 predict 'shots/**/*.png' --weights runs/exp1/final.pth": run(PREDICT, needs=(EXP1,)),
    "solov2 predict photos/ --weights runs/exp1/final.pth --out runs/predict": run(PREDICT, needs=(EXP1,)),
    "solov2 predict --weights runs/exp1/final.pth IMAGES": Check(
        "short", fill={"IMAGES": "photos/"}, outputs=(PREDICT,), needs=(EXP1,), why="IMAGES: photos/"),
    "solov2 predict clip.mp4 --weights w.pth --config r50_3x --frame-stride 5 --device cuda": parse(CUDA),
    "solov2 predict img.jpg --weights w.pth --config light_448_r18 test.score_thr=0.3 --save-masks": run(PREDICT),
    "solov2 predict photos/ --weights w.pth --conf 0.3 --max-det 50 --classes person,2 --imgsz 640": run(PREDICT),
    # eval
    EVAL_W: run("runs/eval*/metrics.json", "runs/eval*/results.json"),
    "solov2 eval --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth --ann "
    "coco/annotations/instances_val2017.json --images coco/val2017 --out runs/eval": run("runs/eval*/metrics.json"),
    "solov2 eval --weights runs/exp1/final.pth --ann val.json --images val/": run(
        "runs/eval*/metrics.json", needs=(EXP1,)),
    "solov2 eval --weights runs/exp1/final.pth --ann ann/val.json --images img/val --out runs/eval": run(
        "runs/eval*/metrics.json", needs=(EXP1,)),
    "solov2 eval --results runs/eval/results.json --ann val.json": run(needs=(EVAL_W,)),
    "solov2 eval --weights runs/demo_shapes/final.pth --ann data/shapes/val.json --images data/shapes/val": run(
        "runs/eval*/metrics.json", needs=(SHAPES_TRAIN,)),
    "solov2 eval --weights w.pth --config r50_3x --ann val.json --images val/ --device cuda test.score_thr=0.05":
        parse(CUDA),
    "torchrun --nproc_per_node 4 -m solov2 eval --weights w.pth --config light_448_r18 --ann val.json "
    "--images val/ --device cuda": parse("4 GPUs"),
    "solov2 eval --backend openvino --weights model.int8.onnx --ann val.json --images val/ --compare-to "
    "runs/eval/metrics.json": run("runs/eval*/metrics.json", needs=(INT8_W, EVAL_W), openvino=True),
    # demo
    DEMO_RUN: short(DEMO, "runs/demo/train/final.pth", "runs/demo/eval/metrics.json", "runs/demo/summary.json",
                    "runs/demo/overlays/*", why=WHY_DEMO),
    "solov2 demo --out runs/seed3 --seed 3 --train 480 --threads 4": short(
        DEMO, "runs/seed3/summary.json", why="minutes (480 images, 8 epochs): 16 images, 2 epochs"),
    "solov2 demo --out runs/demo-gpu --device cuda train.epochs=24 train.lr_steps=[18,22]": parse(CUDA),
    "solov2 demo --out /tmp/ov/demo --train 480 --val 50 --threads 1 --overlays 0 --quiet": parse(
        "minutes (480 images, 8 epochs), outside the sandbox (/tmp/ov): the recorded OpenVINO AP run"),
    # export and ONNX
    EXPORT_W: run("model.onnx"),
    "solov2 export --config light_448_r18 --weights W.pth --out full.onnx --postprocess": run("full.onnx"),
    "solov2 export --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth --out model.onnx": run("model.onnx"),
    "solov2 export --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth --out full.onnx --postprocess":
        run("full.onnx"),
    "solov2 export --weights runs/exp1/final.pth --out model.onnx": run("model.onnx", needs=(EXP1,)),
    "solov2 export --weights runs/exp1/final.pth --out full.onnx --postprocess": run("full.onnx", needs=(EXP1,)),
    INT8_W: short(INT8, "model.onnx", "model.int8.onnx", why=WHY_INT8),
    "solov2 export --weights W.pth --out model.onnx --int8 --calibration-images val2017/ --calibration-count 100":
        short(INT8, "model.onnx", "model.int8.onnx", why=WHY_INT8),
    "solov2 export --weights /tmp/ov/demo/train/final.pth --out /tmp/ov/demo.onnx --height 160 --width 160 "
    "--int8 --calibration-images /tmp/ov/demo/data/train --calibration-count 100": parse(
        "reads the /tmp/ov demo above"),
    "python benchmarks/backends_ap.py --weights /tmp/ov/demo/train/final.pth --onnx /tmp/ov/demo.onnx --int8 "
    "/tmp/ov/demo.int8.onnx --ann /tmp/ov/demo/data/val.json --images /tmp/ov/demo/data/val --json /tmp/ov/ap.json":
        parse("reads the /tmp/ov demo and export above"),
    "solov2 predict photos/ --backend onnxruntime --weights model.onnx --out runs/onnx": run(
        "runs/onnx*/results.json", needs=(EXPORT_W,)),
    "solov2 predict img.jpg --backend onnxruntime --weights model.onnx": run(PREDICT, needs=(EXPORT_W,)),
    "solov2 predict photos/ --backend openvino --weights model.int8.onnx": run(
        PREDICT, needs=(INT8_W,), openvino=True),
    # solov2-runtime
    "solov2-runtime predict model.onnx photos/": run(PREDICT, needs=(EXPORT_W,)),
    "solov2-runtime predict model.onnx photos/ --out runs/predict": run(PREDICT, needs=(EXPORT_W,)),
    "solov2-runtime predict model.onnx photos/ --out runs/onnx": run("runs/onnx*/results.json", needs=(EXPORT_W,)),
    "solov2-runtime predict model.onnx photos/ clip.mp4 --out runs/predict": run(
        PREDICT, "runs/predict*/clip.mp4", needs=(EXPORT_W,)),
    "solov2-runtime predict model.onnx 'shots/**/*.png' test.score_thr=0.3 --save-masks": run(
        PREDICT, needs=(EXPORT_W,)),
    "solov2-runtime predict model.onnx 'shots/**/*.png' test.score_thr=0.3 --save-masks --threads 4": run(
        PREDICT, needs=(EXPORT_W,)),
    "solov2-runtime predict model.onnx clip.mp4 --frame-stride 5 --threads 4": run(
        PREDICT, "runs/predict*/clip.mp4", needs=(EXPORT_W,)),
    "solov2-runtime predict model.onnx photos/ --conf 0.3 --classes person,car --imgsz 640": run(
        PREDICT, needs=(EXPORT_W,)),
    # benchmark
    "solov2 benchmark --config light_448_r18 --size 448x672 --threads 1": short(BENCH, why=WHY_BENCH),
    "solov2 benchmark --config light_448_r18 --size 448x672 --json runs/bench/r18.json": short(
        BENCH, "runs/bench/r18.json", why=WHY_BENCH),
    "python benchmarks/benchmark.py --config light_448_r18 --size 448x672": short(BENCH, why=WHY_BENCH),
    "solov2 benchmark --precision bf16 --no-train": short(BENCH, why=WHY_BENCH),
    "solov2 benchmark --only dcn --threads 1": short(BENCH, why=WHY_BENCH),
    "solov2 benchmark --only dcn --threads 1 --size 448x672 --repeats 10 --warmup 2": short(BENCH, why=WHY_BENCH),
    "solov2 benchmark --weights runs/demo/train/final.pth --config demo_shapes --agreement-images "
    "runs/demo/data/val/*.png": short(BENCH, why=WHY_BENCH, needs=(DEMO_RUN,)),
    "solov2 benchmark --config light_448_r18 --compare --compile": parse(
        "torch.compile builds for minutes on a CPU (and needs a C++ compiler)"),
    "solov2 benchmark --device cuda --precision fp16 --batch 8": parse(CUDA),
    f"solov2 benchmark --only backends --backends {OV_BACKENDS} --calibration-images tests/data/photos": short(
        BENCH, why=WHY_BENCH, openvino=True),
    f"solov2 benchmark --config light_448_r18 --threads 1 --only backends --backends {OV_BACKENDS}": short(
        BENCH, why=WHY_BENCH + " (calibrating on nothing: the size-only random images)", openvino=True),
    f"solov2 benchmark --config light_448_r18 --size 448x672 --batch 2 --threads 1 --only backends --backends "
    f"{OV_BACKENDS} --calibration-images photos/": short(BENCH, why=WHY_BENCH, openvino=True),
    f"python benchmarks/benchmark.py --config light_448_r18 --size 448x672 --batch 2 --repeats 5 --warmup 1 "
    f"--threads 1 --only backends --backends {OV_BACKENDS} --calibration-images tests/data/photos --json "
    "benchmarks/results/15_backends_448x672_1thread.json": parse(
        "the recorded measurement (minutes), whose --json is a committed file"),
}


def argv_of(text: str, check: Check) -> list[str]:
    """The example's argv as bash passes it, placeholders filled, shortening options appended."""
    words = [check.fill.get(word, word) for word in text.split(" ")]
    return shell_argv(" ".join(words)) + list(check.extra)


def call(argv: list[str]) -> int:
    """Run a command line in-process; its exit code."""
    from solov2.cli import main
    from solov2_runtime.cli import main as runtime_main

    threads = torch.get_num_threads()  # --threads N sets the process's count: restore it
    saved_argv = sys.argv
    try:
        if argv[0] == "solov2":
            return main(argv[1:])
        if argv[0] == "solov2-runtime":
            return runtime_main(argv[1:])
        assert argv[0] == "python", argv
        sys.argv = argv[1:]
        runpy.run_path(argv[1], run_name="__main__")
        return 0
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(threads)


def parse_only(argv: list[str]) -> None:
    """The strongest check short of running: the command line parses, its config and overrides
    load and validate (from --config, or the checkpoint it resumes or loads)."""
    from solov2.checkpoint import load_checkpoint
    from solov2.cli import build_parser
    from solov2.config import apply_overrides, config_from_dict, load_config

    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        launch = get_args_parser().parse_args(argv[1:])
        assert launch.module and launch.training_script == "solov2", argv
        argv = ["solov2", *launch.training_script_args]
    elif argv[:2] == ["python", "benchmarks/benchmark.py"]:  # main(["benchmark", *argv]) (the script)
        argv = ["solov2", "benchmark", *argv[2:]]
    elif argv[0] == "python":
        parsed = {}

        def capture(parser, args=None, namespace=None):
            parsed["args"] = original(parser, args, namespace)
            raise SystemExit(0)

        original = argparse.ArgumentParser.parse_args
        argparse.ArgumentParser.parse_args = capture
        try:
            call(argv)  # runs the script, which stops (exit 0) right after parsing its options
        finally:
            argparse.ArgumentParser.parse_args = original
        assert "args" in parsed, f"{argv[1]} parsed no options"
        return
    assert argv[0] == "solov2", argv
    args, extra = build_parser().parse_known_args(argv[1:])
    assert not [item for item in extra if item.startswith("-") or "=" not in item], extra
    overrides = list(getattr(args, "overrides", [])) + extra
    if getattr(args, "config", None):
        load_config(args.config, overrides)
    elif getattr(args, "weights", None) and Path(args.weights).is_file():
        apply_overrides(config_from_dict(load_checkpoint(args.weights).config), overrides)


def written_since(sandbox: Path, pattern: str, start: float) -> list[Path]:
    return [p for p in sandbox.glob(pattern) if p.is_file() and p.stat().st_mtime >= start - 1]


class Sandbox:
    """The stand-in folder, and which examples have run in it (each at most once)."""

    def __init__(self, root: Path) -> None:  # the ``sandbox`` fixture (conftest.py) makes one
        self.root, self.done = root, set()

    def run(self, text: str) -> None:
        check = EXAMPLES[text]
        for need in check.needs:
            if need not in self.done:
                self.run(need)
        self.done.add(text)
        if check.before:
            STAND_INS[check.before](self.root)
        argv = argv_of(text, check)
        start = time.time()
        code = call(argv)
        assert code == 0, f"exit code {code}: {' '.join(argv)}"
        for pattern in check.outputs:
            assert written_since(self.root, pattern, start), f"{pattern} not written by: {' '.join(argv)}"


@pytest.fixture(scope="module")
def examples() -> dict[str, list[str]]:
    return all_examples()


def test_every_example_has_a_check(examples):
    missing = [f"{text!r} ({', '.join(places)})" for text, places in examples.items() if text not in EXAMPLES]
    assert not missing, "examples without an entry in tests/test_examples.py EXAMPLES:\n" + "\n".join(missing)


def test_every_check_has_an_example(examples):
    stale = [text for text in EXAMPLES if text not in examples]
    assert not stale, "EXAMPLES entries that match no example (stale):\n" + "\n".join(stale)


def test_every_reason_is_given():
    for text, check in EXAMPLES.items():
        assert check.how in ("run", "short", "parse", "ci"), text
        assert check.how == "run" or check.why, f"{text}: say why it does not run as written"
        assert set(check.needs) <= set(EXAMPLES), text


@pytest.mark.parametrize("name", sorted(help_parsers()))
def test_help_prints(name, capsys):
    from solov2.cli import main
    from solov2_runtime.cli import main as runtime_main

    prog, *sub = name.split(" ")
    with pytest.raises(SystemExit) as exit_:
        (main if prog == "solov2" else runtime_main)([*sub, "--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def _cases(how: tuple[str, ...], openvino: bool) -> list:
    return [pytest.param(text, id=text[:80]) for text, check in EXAMPLES.items()
            if check.how in how and check.openvino == openvino]


@pytest.mark.parametrize("text", _cases(("ci",), False))
def test_ci_runs_it(text):
    file, needle = EXAMPLES[text].where
    assert needle in (ROOT / file).read_text(), f"{file} does not hold {needle!r}"


@pytest.mark.parametrize("text", _cases(("parse",), False))
def test_example_parses(text, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox.root)
    parse_only(argv_of(text, EXAMPLES[text]))


@pytest.mark.parametrize("text", _cases(("run", "short"), False))
def test_example_runs(text, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox.root)
    sandbox.run(text)


@pytest.mark.openvino
@pytest.mark.parametrize("text", _cases(("run", "short"), True))
def test_openvino_example_runs(text, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox.root)
    sandbox.run(text)
