"""Every command follows docs/cli.md: a bad input is exit code 2 with one 'error:' line."""

from __future__ import annotations

import pytest

from solov2.cli import main


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse and config_or_exit
        return int(stop.code or 0)


@pytest.mark.parametrize("argv, culprit", [
    (["train", "--config", "no_such_preset"], "unknown preset 'no_such_preset'"),
    (["train", "--config", "light_448_r18", "train.log_interval=0"], "'train.log_interval' must be at least 1"),
    (["eval", "--weights", "{tmp}/w.pth", "--ann", "{tmp}/a.json", "--images", "{tmp}"], "w.pth: weights file not found"),
    (["eval", "--results", "{tmp}/r.json", "--ann", "{tmp}/a.json"], "a.json"),
    (["convert", "{tmp}/w.pth", "{tmp}/w.pth"], "OUT must differ from IN"),
    (["demo", "--threads", "0"], "--threads must be at least 1"),
    (["benchmark", "--batch", "0"], "--batch"),
])
def test_bad_input_is_exit_code_2_with_one_error_line(argv, culprit, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert _run(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and culprit in err[0], err


def test_usage_errors_are_exit_code_2(capsys):
    assert _run(["train", "--no-such-option"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_run_dir_increments_instead_of_mixing_runs(tmp_path):
    from solov2.cli.common import run_dir

    out = tmp_path / "predict"
    assert run_dir(out, exist_ok=False) == out  # new
    out.mkdir()
    assert run_dir(out, exist_ok=False) == out  # empty
    (out / "results.json").write_text("[]")
    assert run_dir(out, exist_ok=False) == tmp_path / "predict2"
    (tmp_path / "predict2").mkdir()
    assert run_dir(out, exist_ok=False) == tmp_path / "predict3"
    assert run_dir(out, exist_ok=True) == out


@pytest.mark.parametrize("command", ["convert", "benchmark", "train"])
def test_output_paths_that_cannot_be_written_fail_before_the_work(command, tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    argv = {
        "convert": [["convert", str(tmp_path / "in.pth"), str(folder)], "is a folder; give a file name"],
        "benchmark": [["benchmark", "--json", str(blocker / "r.json")], "cannot write there"],
        "train": [["train", "--config", "light_448_r18", "--work-dir", str(blocker)], "exists and is not a folder"],
    }[command]
    assert _run(argv[0]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and argv[1] in err[0], err
    assert blocker.read_text() == "keep me"


def test_an_onnx_file_given_as_weights_says_what_it_is(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07onnx-ish")
    assert _run(["convert", str(model), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert "model.onnx: an ONNX model, not PyTorch weights: run it with --backend onnxruntime" in err
