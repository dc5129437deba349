"""Every Python example (fenced ``python`` block) of the README, docs/*.md and runtime/README.md
runs, in the examples' sandbox (tests/_example_sandbox.py) after the command examples that
write the files it reads.

``SNIPPETS`` says, for each block (file, first line), the commands to run first (``needs``),
the stand-in names it reads (``inputs``: a photo copied under that name), the variables the
surrounding prose defines (``given``), and ``edits``: the only text replaced, each with its
reason (a CUDA device, a 36-epoch schedule). A block without an entry fails, as does an entry
without a block.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from _examples import python_examples
from _train_data import PHOTOS

EXPORT = "solov2 export --config light_448_r18 --weights SOLOv2_LIGHT_448_R18_3x.pth --out model.onnx"
WEIGHTS = "SOLOv2_LIGHT_448_R18_3x.pth"


def _model_and_cfg() -> dict[str, Any]:
    """``model`` and ``cfg`` as docs/evaluation.md's prose has them: a loaded network and its config."""
    from solov2.checkpoint import load_checkpoint, load_weights
    from solov2.config import load_config
    from solov2.model import SOLOv2

    cfg = load_config("light_448_r18")
    model = SOLOv2(cfg.model)
    load_weights(model, load_checkpoint(WEIGHTS).state_dict)
    return {"model": model.eval(), "cfg": cfg}


def _one_instance() -> dict[str, Any]:
    """The names docs/training.md's loop over a dataset's instances defines."""
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    return {"instance_mask": mask, "k": 1, "image_id": 7, "cid": 3}


def _move_exp1_aside() -> dict[str, Any]:
    target = Path("runs/exp1")
    if target.exists():
        target.rename(f"runs/exp1-before-python-{len(list(Path('runs').glob('exp1-before-python-*')))}")
    return {}


@dataclass(frozen=True)
class Snippet:
    needs: tuple[str, ...] = ()  # command examples (tests/test_examples.py) run first
    inputs: tuple[str, ...] = ()  # image names it reads: a photo is copied under each
    given: Callable[[], dict[str, Any]] = dict  # variables the prose around it defines
    edits: tuple[tuple[str, str], ...] = ()  # (text, replacement) made before running
    why: str = ""  # why the edits
    check: Callable[[dict[str, Any]], None] = lambda names: None  # on the names it defined


def _prediction(names: dict[str, Any]) -> None:
    result = names["result"]
    assert result.masks.ndim == 3 and len(result.labels) == len(result.scores) == len(result.class_names)


def _batched(names: dict[str, Any]) -> None:
    _prediction(names)
    assert len(names["results"]) == 2


def _prediction_and_config(names: dict[str, Any]) -> None:
    _prediction(names)
    assert names["cfg"].model.num_classes == 80  # the exported light_448_r18's, from the .onnx


def _annotation(names: dict[str, Any]) -> None:
    annotation = names["annotation"]
    assert annotation["area"] == 600 and annotation["bbox"] == [20.0, 10.0, 30.0, 20.0]
    assert isinstance(annotation["segmentation"]["counts"], str)


CUDA_TO_CPU = (('device="cuda"', 'device="cpu"'),)
SNIPPETS: dict[tuple[str, str], Snippet] = {
    ("README.md", "from solov2 import Predictor"):
        Snippet(inputs=("street.jpg", "a.jpg", "b.jpg"), check=_batched),
    ("docs/deploy.md", "from solov2_runtime import Runtime"):
        Snippet(needs=(EXPORT,), inputs=("street.jpg",), check=_prediction),
    ("runtime/README.md", "from solov2_runtime import Runtime"):
        Snippet(needs=(EXPORT,), inputs=("street.jpg",), check=_prediction),
    ("docs/export.md", "from solov2.export import OnnxPredictor, read_onnx_config"):
        Snippet(needs=(EXPORT,), inputs=("street.jpg",),
                check=_prediction_and_config),
    ("docs/evaluation.md", "from solov2.engine.evaluate import evaluate_dataset"):
        Snippet(given=_model_and_cfg, edits=CUDA_TO_CPU, why="needs a CUDA device: on the CPU",
                check=lambda names: Path("runs/eval/metrics.json").is_file()),
    ("docs/training.md", "import numpy as np"): Snippet(given=_one_instance, check=_annotation),
    ("docs/training.md", "from solov2.config import load_config"):
        Snippet(given=_move_exp1_aside,
                edits=(('device="cuda")', 'device="cpu", max_iters=1, progress=False)'),
                       ('"data.train_images=img/train"]', '"data.train_images=img/train", '
                                                          '"input.train_scales=[[256, 160]]"]')),
                why="needs a CUDA device and runs a 36-epoch schedule: one iteration on the CPU, "
                    "at a small training scale",
                check=lambda names: Path(names["final"]).is_file()),
}


@pytest.fixture(scope="module")
def snippets() -> dict[tuple[str, str], str]:
    return python_examples()


def test_every_python_example_has_an_entry_and_every_entry_an_example(snippets):
    assert sorted(set(snippets) - set(SNIPPETS)) == [], "Python examples without an entry in SNIPPETS"
    assert sorted(set(SNIPPETS) - set(snippets)) == [], "SNIPPETS entries that match no example (stale)"
    for key, snippet in SNIPPETS.items():
        assert not snippet.edits or snippet.why, f"{key}: say why it is edited"


@pytest.mark.parametrize("key", sorted(SNIPPETS), ids=lambda key: f"{key[0]}:{key[1][:40]}")
def test_python_example_runs(key, snippets, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox.root)
    snippet = SNIPPETS[key]
    for need in snippet.needs:
        if need not in sandbox.done:
            sandbox.run(need)
    for name in snippet.inputs:
        shutil.copy(PHOTOS / "coffee.jpg", sandbox.root / name)
    code = snippets[key]
    for text, replacement in snippet.edits:
        assert text in code, f"{key}: the edit's text {text!r} is not in the example any more"
        code = code.replace(text, replacement)
    names = snippet.given()
    exec(compile(code, f"{key[0]} ({key[1]})", "exec"), names)  # noqa: S102 - the docs' own code
    snippet.check(names)
