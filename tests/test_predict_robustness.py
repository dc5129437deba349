"""predict under hostile conditions (issue 13): Ctrl-C and crashes keep results.json, run
folders never mix, unusable --out / models / option combinations get one error line before
any prediction, the shortcuts map to config keys, overlays are readable."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from solov2_runtime.cli import main as runtime_main
from solov2_runtime.cli import run_predict
from solov2_runtime.predict_files import open_video_writer, predict_files
from solov2_runtime.results_log import assemble_results
from solov2_runtime.results_log import main as assemble_main
from solov2_runtime.predict_options import (ClassFilter, OptionError, apply_long_side, onnx_providers,
                                            shortcut_overrides)
from solov2_runtime.runtime import Result
from solov2_runtime.sources import collect_sources
from solov2_runtime.visualize import draw_result, instance_colour

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cat", "dog", "car"]


class FakePredictor:
    """One square instance per image, labels cycling through NAMES; optional delay / crash."""

    class_names, category_ids = NAMES, [1, 2, 3]

    def __init__(self, delay: float = 0.0, crash_after: int | None = None):
        self.delay, self.crash_after, self.calls = delay, crash_after, 0

    def score_thresholds(self) -> tuple[float, float]:
        return 0.1, 0.05

    def predict_batch(self, images):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise RuntimeError("backend exploded")
        time.sleep(self.delay)
        results = []
        for image in images:
            masks = np.zeros((3,) + image.shape[:2], bool)
            masks[:, 2:10, 2:10] = True
            labels = np.array([0, 1, 2])
            results.append(Result(masks, labels, np.array([0.9, 0.5, 0.2], np.float32),
                                  [NAMES[i] for i in labels], [i + 1 for i in labels]))
        return results


def _images(folder: Path, count: int, suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"img{i:03d}{suffix}"), rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return folder


def _args(out: Path, **changes) -> argparse.Namespace:
    values = dict(out=str(out), exist_ok=False, batch_size=2, frame_stride=1, save_masks=False,
                  no_overlays=False, show_thr=0.3, quiet=True, conf=None, max_det=None, classes=None, imgsz=None)
    values.update(changes)
    return argparse.Namespace(**values)


SIGINT_SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{tests!r}]
    from test_predict_robustness import FakePredictor, _args
    from solov2_runtime.cli import run_predict
    from pathlib import Path
    sys.exit(run_predict(_args(Path({out!r}), batch_size=1), [{inputs!r}], lambda: FakePredictor(0.3), ()))
""")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_during_predict_exits_130_with_valid_results_of_the_images_done(tmp_path, stop):
    inputs = _images(tmp_path / "in", 60)
    out = tmp_path / "out"
    script = SIGINT_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out), inputs=str(inputs))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "runtime")]))
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.rglob("*.png")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    records = json.loads((out / "results.json").read_text())
    done = {r["file_name"] for r in records}
    assert 0 < len(done) < 60
    assert f"holds the {len(done)} image(s)" in stderr
    assert len(records) == 3 * len(done)  # each image done has all its records
    assert not list(out.glob("*.tmp*"))


def test_kill_9_during_predict_leaves_the_records_of_every_image_done(tmp_path):
    inputs = _images(tmp_path / "in", 60)
    out = tmp_path / "out"
    script = SIGINT_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out), inputs=str(inputs))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "runtime")]))
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.rglob("*.png"))) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()  # nobody could assemble it
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    done = {r["file_name"] for r in records}
    assert len(done) >= 2  # at least the images whose overlays were seen before the next began
    assert all(sum(r["file_name"] == name for r in records) == 3 for name in done)
    overlays = {p.stem for p in out.rglob("*.png")}
    assert {Path(name).stem for name in done} <= overlays
    # The lines make the results.json an ended run would have written.
    assert assemble_main([str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == records
    assert not (out / "results.jsonl").exists()
    assert assemble_main([str(out)]) == 2  # nothing left to assemble


def test_assembling_drops_a_last_line_cut_short_and_refuses_a_broken_middle(tmp_path):
    lines = tmp_path / "results.jsonl"
    lines.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "segm')
    assert assemble_results(lines, tmp_path / "results.json") == 2
    assert json.loads((tmp_path / "results.json").read_text()) == [{"a": 1}, {"a": 2}]
    lines.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON record"):
        assemble_results(lines, tmp_path / "again.json")
    assert not (tmp_path / "again.json").exists()


def test_a_video_whose_copy_cannot_be_written_is_still_predicted_and_the_rest_goes_on(tmp_path, capsys):
    inputs = _images(tmp_path / "in", 2)
    writer = cv2.VideoWriter(str(inputs / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (32, 24))
    for i in range(4):
        writer.write(np.full((24, 32, 3), 50 * i, np.uint8))
    writer.release()
    out = tmp_path / "out"
    (out / "in" / "clip.mp4").mkdir(parents=True)  # where the annotated copy would go
    code = run_predict(_args(out, exist_ok=True), [str(inputs)], FakePredictor, ())
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"error: {out / 'in' / 'clip.mp4'}: OpenCV cannot open a video writer" in err
    records = json.loads((out / "results.json").read_text())
    assert sorted({r.get("frame") for r in records if r["file_name"].endswith(".mp4")}) == [0, 1, 2, 3]
    assert {Path(r["file_name"]).name for r in records} == {"img000.png", "img001.png", "clip.mp4"}
    assert (out / "in" / "img000.png").is_file() and (out / "in" / "clip.mp4").is_dir()
    assert not (out / "results.jsonl").exists()


def test_crash_midway_keeps_the_records_done_and_says_so(tmp_path, capsys):
    inputs = _images(tmp_path / "in", 6)
    out = tmp_path / "out"
    code = run_predict(_args(out), [str(inputs)], lambda: FakePredictor(crash_after=2), ())
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: prediction stopped (RuntimeError: backend exploded)")
    records = json.loads((out / "results.json").read_text())
    assert len({r["file_name"] for r in records}) == 4  # two batches of two


def test_a_second_run_gets_its_own_folder_and_exist_ok_reuses(tmp_path, capsys):
    inputs = _images(tmp_path / "in", 2)
    out = tmp_path / "runs" / "predict"
    assert run_predict(_args(out), [str(inputs)], FakePredictor, ()) == 0
    first = (out / "results.json").read_text()
    assert run_predict(_args(out), [str(inputs / "img000.png")], FakePredictor, ()) == 0
    assert (out / "results.json").read_text() == first  # untouched
    second = json.loads((tmp_path / "runs" / "predict2" / "results.json").read_text())
    assert {Path(r["file_name"]).name for r in second} == {"img000.png"}
    assert "predict2" in capsys.readouterr().out
    assert run_predict(_args(out, exist_ok=True), [str(inputs / "img001.png")], FakePredictor, ()) == 0
    assert not (tmp_path / "runs" / "predict3").exists()
    assert {Path(r["file_name"]).name for r in json.loads((out / "results.json").read_text())} == {"img001.png"}


@pytest.mark.parametrize("kind", ["file", "below-a-file"])
def test_unusable_out_is_one_error_before_any_prediction(tmp_path, capsys, kind):
    inputs = _images(tmp_path / "in", 1)
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    out = blocker if kind == "file" else blocker / "sub"
    built = []
    code = run_predict(_args(out), [str(inputs)], lambda: built.append(1) or FakePredictor(), ())
    err = capsys.readouterr().err
    assert code == 2 and not built and blocker.read_text() == "keep me"
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {out}: ")
    assert ("exists and is not a folder" if kind == "file" else "cannot write there") in err


def test_a_pth_given_to_the_onnx_backends_says_to_export_it(tmp_path, capsys):
    from solov2.cli import main as solov2_main

    image = _images(tmp_path / "in", 1) / "img000.png"
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"PK\x03\x04 a zip like torch.save writes")
    for command in (lambda: runtime_main(["predict", str(checkpoint), str(image), "--out", str(tmp_path / "o")]),
                    lambda: solov2_main(["predict", str(image), "--backend", "onnxruntime", "--weights",
                                         str(checkpoint), "--out", str(tmp_path / "o2")])):
        code = command()
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"error: {checkpoint}: not an ONNX model (a PyTorch checkpoint)")
        assert "solov2 export" in err and "--backend pytorch" in err
    assert not (tmp_path / "o" / "results.json").exists()
    renamed = tmp_path / "renamed.onnx"  # a checkpoint whatever its name
    renamed.write_bytes(b"\x80\x02 a pickle")
    assert runtime_main(["predict", str(renamed), str(image), "--out", str(tmp_path / "o3")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {renamed}: not an ONNX model (a PyTorch checkpoint)")
    text = tmp_path / "model.txt"
    text.write_text("hello")
    assert runtime_main(["predict", str(text), str(image), "--out", str(tmp_path / "o4")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {text}: not an ONNX model (a '.txt' file)")


@pytest.mark.parametrize("option, message", [
    (["--precision", "fp16"], "--precision fp16: the onnxruntime backend runs the exported graph in fp32; drop --precision "
     "(or use --backend pytorch)"),
    (["--device", "gpu"], "--device gpu: the onnxruntime backend takes cpu, cuda, cuda:N or auto"),
])
def test_onnx_backend_refuses_options_it_cannot_honour(tmp_path, capsys, option, message):
    from solov2.cli import main as solov2_main

    image = _images(tmp_path / "in", 1) / "img000.png"
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the option is refused first")
    code = solov2_main(["predict", str(image), "--backend", "onnxruntime", "--weights", str(model),
                        "--out", str(tmp_path / "o"), *option])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {message}\n"


def test_onnx_device_maps_to_providers():
    import onnxruntime as ort

    assert onnx_providers("cpu", "fp32") == ["CPUExecutionProvider"]
    assert onnx_providers("auto", "fp32") is None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(OptionError, match="--device cuda:1: this onnxruntime has no CUDA provider"):
            onnx_providers("cuda:1", "fp32")
    else:
        assert onnx_providers("cuda:1", "fp32")[0] == ("CUDAExecutionProvider", {"device_id": 1})


def test_shortcuts_are_the_config_keys():
    args = _args(Path("o"), conf=0.25, max_det=7, imgsz=[384, 640])
    assert shortcut_overrides(args) == ["test.score_thr=0.25", "test.max_per_img=7", "input.test_scale=[640, 384]"]
    assert shortcut_overrides(_args(Path("o"), imgsz=[640])) == []  # one number: applied to the model's ratio
    for bad in ([640, 480, 320], [0]):
        with pytest.raises(OptionError, match="--imgsz"):
            shortcut_overrides(_args(Path("o"), imgsz=bad))

    holder = argparse.Namespace(input=argparse.Namespace(test_scale=[768, 448]))
    apply_long_side(argparse.Namespace(settings=holder), 384)
    assert holder.input.test_scale == [384, 224]
    with pytest.raises(OptionError, match="LONG SHORT"):
        apply_long_side(object(), 384)


def test_classes_keeps_names_or_indices_and_names_an_unknown_one():
    image = np.zeros((24, 32, 3), np.uint8)
    kept = ClassFilter(FakePredictor(), "dog, 2").predict_batch([image])[0]
    assert kept.class_names == ["dog", "car"] and list(kept.labels) == [1, 2] and kept.category_ids == [2, 3]
    assert kept.masks.shape == (2, 24, 32) and np.allclose(kept.scores, [0.5, 0.2])
    for bad in ("horse", "3", "-1"):
        with pytest.raises(OptionError, match=f"--classes: '{bad}' is neither a class name nor a label 0-2 "
                                              "of this model \\(classes: cat, dog, car\\)"):
            ClassFilter(FakePredictor(), bad)


def test_bad_shortcut_values_are_one_error_line(tmp_path, capsys):
    inputs = _images(tmp_path / "in", 1)
    for changes, start in ((dict(classes="horse"), "error: --classes: 'horse'"),
                           (dict(imgsz=[1, 2, 3]), "error: --imgsz 1 2 3")):
        assert run_predict(_args(tmp_path / "o", **changes), [str(inputs)], FakePredictor, ()) == 2
        err = capsys.readouterr().err
        assert err.startswith(start) and len(err.strip().splitlines()) == 1


def test_overlays_colour_by_class_write_no_detections_and_png_for_png(tmp_path):
    image = np.full((40, 40, 3), 60, np.uint8)
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 5:15, 5:15] = masks[1, 25:35, 25:35] = True
    first = Result(masks, np.array([2, 0]), np.array([0.9, 0.8], np.float32), ["car", "cat"], [3, 1])
    second = Result(masks[::-1].copy(), np.array([0, 2]), np.array([0.9, 0.8], np.float32), ["cat", "car"], [1, 3])
    a, b = draw_result(image, first, alpha=1.0), draw_result(image, second, alpha=1.0)
    # The same class has the same colour wherever it stands; the instance index plays no part.
    # ("car" is instance 0 in the first image, instance 1 in the second)
    assert tuple(a[14, 14]) == tuple(b[14, 14]) == instance_colour(2) != instance_colour(1)
    assert tuple(a[34, 34]) == tuple(b[34, 34]) == instance_colour(0)
    empty = Result(np.zeros((0, 40, 40), bool), np.zeros(0, np.int64), np.zeros(0, np.float32), [], [])
    assert (draw_result(image, empty) != image).any()  # "no detections" written
    assert (draw_result(image, empty, empty_text="") == image).all()
    low = draw_result(image, first, min_score=0.95)  # nothing shown: the empty text again
    assert (low != image).any() and (low[30:, :] == image[30:, :]).all()
    with_scores = draw_result(np.full((200, 200, 3), 60, np.uint8), Result(
        np.pad(masks, ((0, 0), (0, 160), (0, 160))), first.labels, first.scores, first.class_names, []))
    without = draw_result(np.full((200, 200, 3), 60, np.uint8), Result(
        np.pad(masks, ((0, 0), (0, 160), (0, 160))), first.labels, first.scores, first.class_names, []),
        show_scores=False)
    assert (with_scores != without).any()  # the scores are the difference

    inputs = _images(tmp_path / "in", 1, ".png")
    cv2.imwrite(str(inputs / "photo.jpg"), np.full((24, 32, 3), 90, np.uint8))
    summary = predict_files(FakePredictor(), collect_sources([str(inputs)])[0], tmp_path / "out",
                            save_masks=True, progress=False)
    assert (tmp_path / "out" / "in" / "img000.png").is_file() and (tmp_path / "out" / "in" / "photo.jpg").is_file()
    png = cv2.imread(str(tmp_path / "out" / "in" / "img000.png"))
    assert png.shape == (24, 32, 3) and summary.images == 2
    # --save-masks honours --show-thr (0.3): scores 0.9 and 0.5 of each image, not 0.2.
    assert sorted(p.name for p in (tmp_path / "out" / "masks").rglob("*.png")) == [
        "img000_000_cat.png", "img000_001_dog.png", "photo_000_cat.png", "photo_001_dog.png"]


def test_video_writer_uses_h264_when_opencv_has_it(tmp_path):
    path = tmp_path / "probe.mp4"
    probe = cv2.VideoWriter(str(tmp_path / "direct.mp4"), cv2.VideoWriter_fourcc(*"avc1"), 5, (64, 48))
    has_avc1 = probe.isOpened()
    probe.release()
    writer, codec = open_video_writer(path, 5, (64, 48))
    assert codec == ("avc1" if has_avc1 else "mp4v")
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()


def test_globs_keep_the_folder_structure_below_their_fixed_part(tmp_path, monkeypatch):
    _images(tmp_path / "shots" / "a", 1)
    _images(tmp_path / "shots", 1)
    monkeypatch.chdir(tmp_path)
    for pattern, expected in (("shots/**/*.png", {"shots/a/img000.png", "shots/img000.png"}),
                              ("**/*.png", {"shots/a/img000.png", "shots/img000.png"}),
                              (str(tmp_path / "shots" / "*" / "*.png"), {"shots/a/img000.png"})):
        assert {str(s.relative) for s in collect_sources([pattern])[0]} == expected


def test_demo_ground_truth_takes_the_prediction_colours_of_its_classes(tmp_path):
    from solov2.engine.demo import _ground_truth
    from solov2.evaluation.coco_eval import load_coco

    square = [[2, 2, 12, 2, 12, 12, 2, 12]]
    ann = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
           "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "segmentation": square, "area": 100,
                            "bbox": [2, 2, 10, 10], "iscrowd": 0}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    truth = _ground_truth(load_coco(tmp_path / "ann.json"), 1, [5, 9])  # the predictor's label order
    assert list(truth.labels) == [1] and truth.class_names == ["dog"]
    image = np.full((20, 20, 3), 60, np.uint8)
    drawn = draw_result(image, truth, alpha=1.0, show_scores=False)
    assert tuple(drawn[12, 12]) == instance_colour(1)


def test_assembling_on_a_full_disk_is_one_error_line_and_keeps_the_lines(tmp_path, monkeypatch, capsys):
    import errno

    import solov2_runtime.results_log as results_log

    lines = tmp_path / "results.jsonl"
    lines.write_text('{"a": 1}\n')

    def full_disk(path, mode="w"):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(results_log, "atomic_open", full_disk)
    assert assemble_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'results.json'}: No space left on device; "
                                       f"{lines} is kept\n")
    assert lines.read_text() == '{"a": 1}\n' and not (tmp_path / "results.json").exists()
