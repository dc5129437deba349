"""``solov2 eval --backend``: an exported model scored like the PyTorch one, and the AP drift
against an earlier evaluation printed by --compare-to."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino  # see conftest.py: OpenVINO and later PyTorch training in one process

from solov2.cli import main  # noqa: E402
from solov2.config import load_config  # noqa: E402
from solov2.export.onnx import export_onnx  # noqa: E402
from solov2.model import SOLOv2  # noqa: E402

from _train_data import write_shapes_dataset  # noqa: E402
from test_eval_robustness import OVERRIDES, checkpoint  # noqa: E402,F401  (fixture)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    from solov2.checkpoint import load_checkpoint, load_weights

    loaded = load_checkpoint(checkpoint)
    cfg = load_config("light_448_r18", OVERRIDES)
    model = SOLOv2(cfg.model)
    load_weights(model, loaded.state_dict, source=str(checkpoint))
    return export_onnx(model.eval(), cfg, tmp_path_factory.mktemp("onnx") / "model.onnx", 96, 128)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_model_scores_like_pytorch(backend, checkpoint, exported, tmp_path, capsys):
    ann, images = write_shapes_dataset(tmp_path / "data", num_images=4)
    common = ["--ann", str(ann), "--images", str(images), "--device", "cpu", "--quiet"]
    assert main(["eval", "--weights", str(checkpoint), "--out", str(tmp_path / "pt"), *common]) == 0
    reference = tmp_path / "pt" / "metrics.json"
    capsys.readouterr()
    assert main(["eval", "--backend", backend, "--weights", str(exported), "--out", str(tmp_path / backend),
                 "--compare-to", str(reference), *common]) == 0
    out = capsys.readouterr().out
    got = json.loads((tmp_path / backend / "metrics.json").read_text())
    expected = json.loads(reference.read_text())
    assert got["detections"] > 0 and abs(got["mask_AP"] - expected["mask_AP"]) < 0.01
    drift = next(line for line in out.splitlines() if line.startswith("drift against"))
    assert str(reference) in drift and "mask AP" in drift and "box AP75" in drift


def test_backend_options_it_cannot_honour_are_refused(exported, tmp_path, capsys):
    ann, images = write_shapes_dataset(tmp_path / "data", num_images=2)
    common = ["--ann", str(ann), "--images", str(images), "--quiet", "--weights", str(exported)]
    assert main(["eval", "--backend", "onnxruntime", "--precision", "bf16", *common]) == 2
    assert "drop --precision" in capsys.readouterr().err
    assert main(["eval", "--backend", "openvino", "--config", "light_448_r18", *common]) == 2
    assert "drop --config" in capsys.readouterr().err
    assert main(["eval", "--backend", "onnxruntime", "--compare-to", str(tmp_path / "none.json"), *common]) == 2
    assert "none.json: not a readable metrics.json" in capsys.readouterr().err
