"""``solov2 train`` options: --resume finds the newest readable checkpoint, refuses options
that contradict it, and an unknown device is one error line."""

from __future__ import annotations


import pytest

from _train_data import read_metrics, train_tiny_cli
from solov2.cli import main
from solov2.cli.train import resume_checkpoint
from solov2.checkpoint import CheckpointError


def test_resume_takes_the_newest_readable_epoch_when_latest_is_corrupt(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny_cli(tmp_path, run, "--max-iters", "4") == 0  # 2 iterations per epoch: epochs 1 and 2
    assert (run / "epoch_2.pth").is_file()
    (run / "latest.pth").write_bytes((run / "latest.pth").read_bytes()[:100])  # a half-written file
    assert resume_checkpoint(run)[0] == run / "epoch_2.pth"
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "latest.pth unreadable" in err and f"resuming from {run / 'epoch_2.pth'}" in err
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]  # continued at iteration 5, not 1


def test_resume_without_any_readable_checkpoint(tmp_path):
    (tmp_path / "latest.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "epoch_1.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint to resume from"):
        resume_checkpoint(tmp_path)


@pytest.mark.parametrize("extra, culprit", [
    (["--config", "light_448_r18"], "drop --config"),
    (["--load-from", "w.pth"], "drop --load-from"),
    (["--backbone-weights", "r18.pth"], "drop --backbone-weights"),
])
def test_resume_refuses_options_it_would_ignore(tmp_path, capsys, extra, culprit):
    assert main(["train", "--resume", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume continues a run") and culprit in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("device, message", [
    ("gpu", "unknown device 'gpu': use auto, cpu, cuda or cuda:N"),
    ("cuda:x", "unknown device 'cuda:x': use auto, cpu, cuda or cuda:N"),
    ("meta", "device 'meta' is not supported: use auto, cpu, cuda or cuda:N"),
])
def test_unknown_device_is_one_error_line(tmp_path, capsys, device, message):
    assert main(["train", "--config", "light_448_r18", "--device", device, "--work-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
