"""solov2-runtime: RLE records equal pycocotools', the metadata config is read without PyYAML,
predictions equal solov2's on the same .onnx (real photos when ../shared is there, synthetic
images otherwise), and ``solov2-runtime predict`` runs end to end where ``import torch`` fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from test_onnx import OVERRIDES, exported, photo_files  # noqa: E402,F401  (fixtures)
from test_runtime_postprocess import assert_same_instances  # noqa: E402

from solov2.cli import main as solov2_main  # noqa: E402
from solov2.config import available_presets, load_config  # noqa: E402
from solov2.engine.predictor import Predictor  # noqa: E402
from solov2.export.onnx_runtime import OnnxPredictor  # noqa: E402
from solov2_runtime import Runtime  # noqa: E402
from solov2_runtime.cli import main as runtime_main  # noqa: E402
from solov2_runtime.preprocess import pad_arrays, preprocess_array  # noqa: E402
from solov2_runtime.records import encode_masks, encode_masks_numpy, mask_boxes  # noqa: E402
from solov2_runtime.settings import SettingsError, apply_overrides, settings_from_yaml  # noqa: E402
from solov2_runtime.yaml_subset import parse_yaml  # noqa: E402


def rle_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = np.zeros((5, 60, 90), bool)
    shapes[0, 10:50, 20:70] = True
    shapes[1, ::2, ::3] = True
    shapes[2, -1, -1] = shapes[3, 0, 0] = True
    cv2.circle(shapes[4].view(np.uint8), (45, 30), 25, 1, -1)
    return [np.zeros((2, 5, 7), bool), np.ones((2, 4, 4), bool), rng.random((30, 31, 17)) < 0.5,
            rng.random((4, 100, 80)) < 0.999, rng.random((4, 100, 80)) < 0.001, shapes,
            rng.random((3, 1, 40)) < 0.5, rng.random((3, 40, 1)) < 0.5]


@pytest.mark.parametrize("case", range(len(rle_cases())))
def test_rle_and_boxes_equal_pycocotools(case):
    masks = rle_cases()[case]
    expected = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    got = encode_masks_numpy(masks)  # the runtime's own encoder, where pycocotools is absent
    assert [r["counts"].decode("ascii") for r in expected] == [r["counts"] for r in got]
    assert encode_masks(masks) == got  # pycocotools' where it is installed, the same records
    assert all(list(r["size"]) == g["size"] for r, g in zip(expected, got))
    np.testing.assert_array_equal(mask_boxes(masks), mask_utils.toBbox(expected).reshape(-1, 4))
    decoded = mask_utils.decode([{"size": g["size"], "counts": g["counts"].encode()} for g in got])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), masks)


def test_stored_config_is_read_as_pyyaml_reads_it():
    tricky = ["a b", "x: y", "it's", "1", "é", "yes", "", "long " * 30, "-dash", "#hash", "[x]", 'a"b',
              "null", "1e5", ".5", "日本"]
    for preset in available_presets():
        cfg = load_config(preset).to_dict()
        cfg["model"]["class_names"] = tricky
        cfg["data"]["train_ann"] = "/a long path with spaces " * 5
        cfg["train"]["weight_decay"] = 1e-5
        text = yaml.safe_dump(cfg, sort_keys=False)
        assert parse_yaml(text) == yaml.safe_load(text), preset
    with pytest.raises(ValueError, match="unsupported"):
        parse_yaml("a: &anchor 1\n")


def test_settings_and_overrides():
    cfg = load_config("light_448_r18", ["model.num_classes=3", "test.score_thr=0.2"])
    settings = settings_from_yaml(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert settings.class_names == ["class_0", "class_1", "class_2"] and settings.category_ids == [1, 2, 3]
    assert settings.test.score_thr == 0.2 and settings.grids == cfg.model.grids
    apply_overrides(settings, ["test.max_per_img=7", "input.test_scale=[640, 384]", "test.mask_thr=1"])
    assert (settings.test.max_per_img, settings.input.test_scale, settings.test.mask_thr) == (7, [640, 384], 1.0)
    for bad, message in [("model.num_classes=3", "only test"), ("test.nope=1", "test.nope"),
                         ("test.max_per_img=many", "expects int"), ("test.nms_kernel=box", "nms_kernel")]:
        with pytest.raises(SettingsError, match=message):
            apply_overrides(settings, [bad])


def test_runtime_equals_pytorch_postprocessing_on_the_same_onnx(exported, photo_files):
    path, _, cfg = exported
    runtime = Runtime(path, overrides=OVERRIDES)
    reference = OnnxPredictor(path, overrides=OVERRIDES)  # the same graph, PyTorch post-processing
    images = [runtime.prepare(p) for p in photo_files]
    expected, got = reference.predict_batch(images), runtime.predict_batch(images)
    inp = runtime.settings.input
    for image, exp, res in zip(images, expected, got):
        assert len(exp) > 0
        array, size = preprocess_array(image, inp.test_scale, inp.mean, inp.std)
        logits, kernels, features = (o[0] for o in runtime.raw_outputs(pad_arrays([array])))
        candidates = int((logits > np.log(cfg.test.score_thr / (1 - cfg.test.score_thr))).sum())
        assert candidates >= 200  # hundreds of candidates
        assert_same_instances(exp, res, logits, kernels, features, size, image.shape[:2], runtime.settings.test)
        assert exp.class_names == res.class_names and exp.category_ids == res.category_ids


def test_runtime_matches_the_pytorch_predictor(exported, photo_files):
    path, model, cfg = exported
    expected = Predictor(model, cfg).predict_batch([cv2.imread(str(p)) for p in photo_files])
    results = Runtime(path, overrides=OVERRIDES)(photo_files)
    for exp, res in zip(expected, results):
        # Another network implementation (ONNX Runtime's convolutions): as tests/test_onnx.py.
        assert np.array_equal(exp.labels, res.labels)
        np.testing.assert_allclose(res.scores, exp.scores, rtol=0, atol=1e-3)
        assert int((res.masks != exp.masks).sum()) <= 1e-5 * exp.masks.size
        boxes = res.boxes
        ys, xs = np.nonzero(res.masks[0])
        assert boxes.shape == (len(res), 4)
        assert boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_batched_equals_one_by_one(exported, photo_files):
    path, _, _ = exported
    runtime = Runtime(path, overrides=OVERRIDES, batch_size=2)
    image = cv2.imread(str(photo_files[0]))
    batched = runtime([image, photo_files[1], image[:, ::-1].copy(), photo_files[0]])
    for item, result in zip([image, photo_files[1], image[:, ::-1].copy(), photo_files[0]], batched):
        single = runtime(item)
        assert np.array_equal(single.labels, result.labels) and np.array_equal(single.masks, result.masks)
        np.testing.assert_allclose(single.scores, result.scores, rtol=0, atol=1e-6)


def write_inputs(folder: Path, photos: list[Path]) -> list[str]:
    """A folder of two images and a corrupt one, and a 3-frame video."""
    (folder / "shots").mkdir(parents=True)
    for p in photos[:2]:
        cv2.imwrite(str(folder / "shots" / (p.stem + ".png")), cv2.imread(str(p)))
    (folder / "shots" / "broken.jpg").write_bytes(b"not an image")
    frame = cv2.resize(cv2.imread(str(photos[2])), (320, 240))
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (320, 240))
    for shift in range(3):
        writer.write(np.roll(frame, 8 * shift, axis=1))
    writer.release()
    return [str(folder / "shots"), str(folder / "clip.mp4")]


def torch_free_env(tmp_path: Path) -> dict[str, str]:
    """The environment with a ``torch`` package first on the path whose import fails."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is not available here')\n")
    paths = [str(tmp_path / "blocker"), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_runtime_command_runs_without_torch_and_writes_what_solov2_predict_writes(exported, photo_files, tmp_path):
    path, _, _ = exported
    inputs = write_inputs(tmp_path / "in", photo_files)
    env = torch_free_env(tmp_path)
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "torch is not available" in check.stderr
    out = tmp_path / "runtime_out"
    run = subprocess.run([sys.executable, "-m", "solov2_runtime", "predict", str(path), *inputs, "--out", str(out),
                          "--save-masks", "test.max_per_img=5"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 1, run.stderr  # one input failed
    assert "error: " in run.stderr and "broken.jpg" in run.stderr and "Traceback" not in run.stderr
    assert "predicted 2 images and 3 frames of 1 videos" in run.stdout
    records = json.loads((out / "results.json").read_text())
    assert {r.get("frame") for r in records} >= {None, 0, 1, 2}
    assert (out / "shots" / (photo_files[0].stem + ".png")).is_file() and (out / "clip.mp4").is_file()
    # --save-masks writes the instances --show-thr (0.3) draws; results.json keeps all.
    assert len(list((out / "masks").rglob("*.png"))) == sum(r["score"] >= 0.3 for r in records)

    reference = tmp_path / "solov2_out"
    assert solov2_main(["predict", *inputs, "--backend", "onnxruntime", "--weights", str(path), "--out",
                        str(reference), "--quiet", "--save-masks", "test.max_per_img=5"]) == 1
    assert json.loads((reference / "results.json").read_text()) == records


def test_runtime_command_reports_bad_models_and_options(exported, photo_files, tmp_path, capsys):
    path, _, _ = exported
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"garbage")
    image = str(photo_files[0])
    cases = [([str(tmp_path / "missing.onnx"), image], "model file not found"),
             ([str(not_onnx), image], "not a readable ONNX model"),
             ([str(path), image, "model.num_classes=3"], "only test"),
             ([str(path), str(tmp_path / "none.jpg")], "nothing to predict")]
    for args, message in cases:
        assert runtime_main(["predict", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    blocked = tmp_path / "file_not_folder"
    blocked.write_text("x")
    assert runtime_main(["predict", str(path), image, "--out", str(blocked), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {blocked}: exists and is not a folder; choose another --out\n"
    assert blocked.read_text() == "x"


def test_runtime_package_needs_only_numpy_opencv_and_onnxruntime():
    import ast
    import re
    import tomllib

    root = Path(__file__).resolve().parents[1] / "runtime"
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "solov2-runtime"
    assert project["scripts"] == {"solov2-runtime": "solov2_runtime.cli:main"}
    names = {re.split(r"[<>=!~ \[;]", d)[0] for d in project["dependencies"]}
    assert names == {"numpy", "opencv-python-headless", "onnxruntime"}
    allowed = set(sys.stdlib_module_names) | {"numpy", "cv2", "onnxruntime", "solov2_runtime"}
    speed_ups = {"pycocotools"}  # used only where installed: imported under try/except ImportError
    for module in (root / "solov2_runtime").glob("*.py"):
        tree = ast.parse(module.read_text())
        guarded = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.Try)
                   and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers)
                   for stmt in node.body for sub in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in guarded and isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in speed_ups:
                continue
            if isinstance(node, ast.Import):
                found = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found = {node.module.split(".")[0]}
            else:
                continue
            assert found <= allowed, (module.name, found - allowed)
