"""INT8 quantization: the calibration set is checked (missing, empty, unreadable folders are
clear errors naming the folder), the metadata travels, the layers kept in float stay float,
and on a small trained model (the demo's, trained in the fixture) every instance that fp32
scores >= 0.3 on held-out images is found by the INT8 model in ONNX Runtime and OpenVINO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.openvino  # see conftest.py: OpenVINO and later PyTorch training in one process

import onnx  # noqa: E402

from solov2.benchmark.agreement import agreement_figures  # noqa: E402
from solov2.cli import main  # noqa: E402
from solov2.config import load_config  # noqa: E402
from solov2.data.image_io import read_image  # noqa: E402
from solov2.engine.demo import run_demo  # noqa: E402
from solov2.engine.predictor import Predictor  # noqa: E402
from solov2.export.onnx import export_onnx, read_onnx_config  # noqa: E402
from solov2.export.onnx_runtime import OnnxPredictor  # noqa: E402
from solov2.export.quantize import KEEP_FLOAT, QUANTIZATION_KEY, CalibrationError, quantize_onnx  # noqa: E402

TINY = ["model.num_classes=3", "model.grids=[8,6,4,4,2]", "model.head_channels=64",
        "model.fpn_channels=64", "model.kernel_channels=32", "model.mask_mid_channels=32"]


@pytest.fixture(scope="module")
def tiny_onnx(random_model, tmp_path_factory) -> tuple[Path, object]:
    cfg = load_config("light_448_r18", TINY)
    model = random_model("light_448_r18", overrides=tuple(TINY))
    return export_onnx(model, cfg, tmp_path_factory.mktemp("q") / "tiny.onnx", 64, 96), cfg


def test_refuses_missing_empty_and_unreadable_calibration_folders(tiny_onnx, tmp_path):
    path, _ = tiny_onnx
    with pytest.raises(CalibrationError, match="calibration folder not found"):
        quantize_onnx(path, tmp_path / "q.onnx", tmp_path / "missing")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match=f"{empty}: no image files"):
        quantize_onnx(path, tmp_path / "q.onnx", empty)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.jpg").write_bytes(b"not a jpeg")
    (corrupt / "b.png").write_bytes(b"")
    with pytest.raises(CalibrationError, match=f"{corrupt}: none of the 2 calibration images is readable"):
        quantize_onnx(path, tmp_path / "q.onnx", corrupt)
    assert not (tmp_path / "q.onnx").exists()


def test_export_command_errors(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--config", "light_448_r18", *TINY, "--out", str(out), "--int8"]) == 2
    assert "error: --int8 needs --calibration-images" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--config", "light_448_r18", *TINY, "--out", str(out), "--height", "64",
                 "--width", "96", "--no-check", "--int8", "--calibration-images", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"error: {empty}: no image files" in err and "Traceback" not in err
    assert out.is_file() and not (tmp_path / "m.int8.onnx").exists()  # the fp32 model stays


def test_metadata_and_float_layers(tiny_onnx, photos, tmp_path):
    path, cfg = tiny_onnx
    out = quantize_onnx(path, tmp_path / "tiny.int8.onnx", photos[0].parent, count=2)
    assert read_onnx_config(out).to_dict() == cfg.to_dict()
    graph = onnx.load(str(out))
    props = {p.key: p.value for p in graph.metadata_props}
    assert "kept in float" in props[QUANTIZATION_KEY]
    producers = {o: n for n in graph.graph.node for o in n.output}
    initializers = {i.name for i in graph.graph.initializer}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    for conv in convs:
        weight = conv.input[1]
        quantized = weight in producers and producers[weight].op_type == "DequantizeLinear"
        keep = any(part in conv.name for part in KEEP_FLOAT)
        assert quantized != keep, conv.name
        if keep:
            assert weight in initializers or producers[weight].op_type != "DequantizeLinear"
    assert sum(any(part in c.name for part in KEEP_FLOAT) for c in convs) == 11  # 2 x 5 levels + 1


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> tuple[Path, Path]:
    """The demo trained small (160 iterations): its run folder and the exported .onnx."""
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, train_images=160, val_images=8, seed=0, overlays=0, progress=False)
    onnx_path = out / "model.onnx"
    assert main(["export", "--weights", str(out / "train" / "final.pth"), "--out", str(onnx_path),
                 "--height", "160", "--width", "160", "--no-check", "--int8", "--calibration-images",
                 str(out / "data" / "train"), "--calibration-count", "32"]) == 0
    return out, onnx_path


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_finds_every_confident_instance(demo_model, backend):
    out, onnx_path = demo_model
    images = [read_image(p) for p in sorted((out / "data" / "val").glob("*.png"))]
    assert images
    reference = Predictor.from_config(None, out / "train" / "final.pth").predict_batch(images)
    if backend == "openvino":
        pytest.importorskip("openvino")
        from solov2.export.openvino_backend import OpenVinoPredictor

        int8 = OpenVinoPredictor(onnx_path.with_name("model.int8.onnx"), num_threads=1)
    else:
        int8 = OnnxPredictor(onnx_path.with_name("model.int8.onnx"), num_threads=1)
    figures = agreement_figures(reference, int8.predict_batch(images))
    assert figures["confident_fp32_instances"] >= 8, figures
    assert figures["confident_matched_fraction"] == 1.0, figures
    assert figures["confident_mask_iou"]["min"] >= 0.85, figures
    assert figures["matched_score_abs_diff"]["mean"] < 0.05, figures
    assert np.isfinite(figures["matched_mask_iou"]["mean"])


@pytest.mark.slow
def test_runtime_equals_pytorch_postprocessing_on_the_demo_model(demo_model):
    """solov2-runtime's NumPy post-processing against the PyTorch one on the same fp32 .onnx of
    a trained model (the demo's, small): labels and order equal, scores within 1e-5, masks
    equal but for pixels within 1e-5 of mask_thr."""
    from solov2_runtime import Runtime
    from solov2_runtime.preprocess import pad_arrays, preprocess_array
    from test_runtime_postprocess import assert_same_instances

    out, onnx_path = demo_model
    runtime, reference = Runtime(onnx_path, num_threads=1), OnnxPredictor(onnx_path, num_threads=1)
    images = [read_image(p) for p in sorted((out / "data" / "val").glob("*.png"))]
    expected, got = reference.predict_batch(images), runtime.predict_batch(images)
    assert sum(len(e) for e in expected) >= 8  # the trained model finds the shapes
    inp = runtime.settings.input
    for image, exp, res in zip(images, expected, got):
        array, size = preprocess_array(image, inp.test_scale, inp.mean, inp.std)
        logits, kernels, features = (o[0] for o in runtime.raw_outputs(pad_arrays([array])))
        assert_same_instances(exp, res, logits, kernels, features, size, image.shape[:2], runtime.settings.test)
        assert exp.class_names == res.class_names and exp.category_ids == res.category_ids
