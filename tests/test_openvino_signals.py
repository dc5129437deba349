"""OpenVINO sessions leave the process able to handle signals: two sessions released in the
order they were made, then a SIGINT (as Ctrl-C, or the training tests' simulated Ctrl-C) runs
its Python handler instead of crashing (solov2.export.openvino_backend's module docstring says
why a Core per session crashed). Runs in a subprocess: the failure is a segmentation fault."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("onnx")
pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino

from _train_data import PROJECT_ROOT  # noqa: E402

SCRIPT = textwrap.dedent("""
    import signal, sys
    import onnx
    from onnx import TensorProto, helper
    from solov2.export.openvino_backend import OpenVinoSession

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])

    first, second = OpenVinoSession(sys.argv[1], 1), OpenVinoSession(sys.argv[1], 1)
    del first   # released in the order made, not the reverse
    del second
    signal.signal(signal.SIGINT, lambda *_: print("handler ran", flush=True))
    signal.raise_signal(signal.SIGINT)
    print("done", flush=True)
""")


def test_sigint_after_two_sessions_released_in_creation_order(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "runtime")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "relu.onnx")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["handler", "ran", "done"]
