"""``solov2 export --postprocess``: one ONNX graph from padded image to final masks, labels and
scores, run with nothing but onnxruntime and numpy, equal to the NumPy runtime's results on
the same weights (labels and order equal, scores within 1e-5, masks identical except pixels
whose probability is within 1e-5 of mask_thr)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from test_onnx import OVERRIDES, real_model  # noqa: E402
from test_onnx import photo_files  # noqa: E402,F401  (fixture)
from test_runtime import torch_free_env  # noqa: E402
from test_runtime_postprocess import assert_same_instances  # noqa: E402

from solov2.checkpoint import atomic_save, make_checkpoint  # noqa: E402
from solov2.cli import main as solov2_main  # noqa: E402
from solov2_runtime import Runtime  # noqa: E402
from solov2_runtime.preprocess import pad_arrays, preprocess_array  # noqa: E402

# Only onnxruntime and numpy: the image is already at the model's input size (448 x 640 fits
# test_scale [768, 448] without resizing), so preprocessing is a normalization and a pad.
STANDALONE = textwrap.dedent("""
    import sys
    import numpy as np
    import onnxruntime as ort

    model, image_file, out_file = sys.argv[1:]
    bgr = np.load(image_file)
    rgb = bgr[:, :, ::-1].astype(np.float32)
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    std = np.array([58.395, 57.12, 57.375], np.float32)
    chw = ((rgb - mean) / std).transpose(2, 0, 1)
    h, w = chw.shape[1:]
    padded = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
    padded[0, :, :h, :w] = chw
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    masks, labels, scores = session.run(None, {"images": padded, "image_size": np.array([h, w]),
                                               "original_size": np.array([h, w])})
    np.savez(out_file, masks=masks, labels=labels, scores=scores)
    print(sorted(sys.modules))
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    model, cfg = real_model()
    folder = tmp_path_factory.mktemp("full")
    weights = folder / "model.pth"
    atomic_save(make_checkpoint(model, cfg.to_dict()), weights)
    common = ["export", "--weights", str(weights), "--height", "256", "--width", "320"]
    assert solov2_main([*common, "--out", str(folder / "network.onnx"), "--no-check"]) == 0
    assert solov2_main([*common, "--out", str(folder / "full.onnx"), "--postprocess"]) == 0
    return folder / "network.onnx", folder / "full.onnx"


def compare(network: Runtime, image: np.ndarray, got, expected) -> None:
    inp = network.settings.input
    array, size = preprocess_array(image, inp.test_scale, inp.mean, inp.std)
    logits, kernels, features = (o[0] for o in network.raw_outputs(pad_arrays([array])))
    assert_same_instances(expected, got, logits, kernels, features, size, image.shape[:2], network.settings.test)


def test_one_graph_with_only_onnxruntime_and_numpy(models, photo_files, tmp_path):  # noqa: F811
    network_path, full_path = models
    image = cv2.resize(cv2.imread(str(photo_files[0])), (640, 448))
    np.save(tmp_path / "image.npy", image)
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    run = subprocess.run([sys.executable, str(script), str(full_path), str(tmp_path / "image.npy"),
                          str(tmp_path / "out.npz")], env=torch_free_env(tmp_path), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    loaded = {m.split(".")[0] for m in eval(run.stdout.strip().splitlines()[-1])}
    assert not loaded & {"torch", "cv2", "solov2", "solov2_runtime"}
    out = np.load(tmp_path / "out.npz")

    class Found:
        masks, labels, scores = out["masks"], out["labels"], out["scores"]

    network = Runtime(network_path, overrides=OVERRIDES)
    expected = network(image)
    assert len(expected) > 0 and Found.masks.dtype == bool and Found.masks.shape == expected.masks.shape
    compare(network, image, Found, expected)


def test_runtime_runs_one_graph_models_at_any_size(models, photo_files):  # noqa: F811
    network_path, full_path = models
    network, full = Runtime(network_path, overrides=OVERRIDES), Runtime(full_path)
    assert full.full_graph and not network.full_graph
    images = [cv2.imread(str(p)) for p in photo_files[:2]]
    images.append(cv2.resize(images[0], (333, 517)))  # portrait, another padded size
    for image, got, expected in zip(images, full(images), network(images)):
        assert len(expected) > 0
        compare(network, image, got, expected)
        assert got.class_names == expected.class_names


def test_one_graph_thresholds_are_fixed(models):
    _, full_path = models
    from solov2_runtime.settings import SettingsError

    with pytest.raises(SettingsError, match="fixed inside a one-graph model"):
        Runtime(full_path, overrides=["test.score_thr=0.3"])
