"""``solov2 train`` options: --resume finds the newest readable checkpoint, refuses options
that contradict it, and an unknown device is one error line."""

from __future__ import annotations


import pytest

from _train_data import read_metrics, tiny_shapes, train_tiny_cli
from solov2.cli import main
from solov2.cli.train import resume_checkpoint
from solov2.checkpoint import CheckpointError, load_checkpoint


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


def test_keep_checkpoints_best_checkpoint_and_warnings_in_the_log(tmp_path):
    ann, images = tiny_shapes(tmp_path)
    broken = images / "img_001.png"
    broken.write_bytes(broken.read_bytes()[:60])  # a PNG signature, then nothing: fails when decoded
    run = tmp_path / "run"
    assert train_tiny_cli(tmp_path, run, "train.keep_checkpoints=1", f"data.val_ann={ann}",
                          f"data.val_images={images}", "train.val_interval=1") == 0
    assert sorted(p.name for p in run.glob("epoch_*.pth")) == ["epoch_3.pth"]
    val = read_metrics(run, "val")
    assert [r["epoch"] for r in val] == [1, 2, 3]
    best_ap = max(r["mask_AP"] for r in val)
    best = load_checkpoint(run / "best.pth").raw
    assert best["best_mask_ap"] == best_ap and "optimizer" not in best
    assert best["epoch"] == next(r["epoch"] for r in val if r["mask_AP"] == best_ap)
    assert load_checkpoint(run / "latest.pth").raw["best_mask_ap"] == best_ap
    log = (run / "train.log").read_text()
    assert "warning: model.num_classes 80 replaced by the 2 categories" in log
    assert f"warning: {broken}: not a readable image" in log and "using another image instead" in log


def test_warnings_during_a_run_are_one_line_in_the_console_and_train_log(tmp_path, capsys):
    from solov2.warning_lines import show_warning
    from solov2.engine.train_log import TrainLog

    log = TrainLog(tmp_path, is_main=True)
    log.open()
    try:
        show_warning(UserWarning("This DataLoader will create 8 worker processes"), UserWarning, __file__, 1)
    finally:
        log.close()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("warning: This DataLoader will create 8 worker processes")
    assert capsys.readouterr().out == "warning: This DataLoader will create 8 worker processes\n"
    # Outside a run, the commands print the same single line on stderr.
    show_warning(UserWarning("image too small"), UserWarning, __file__, 1)
    assert capsys.readouterr().err == "warning: image too small\n"


def test_commands_print_a_library_warning_as_one_line(monkeypatch, tmp_path, capsys):
    import warnings

    from solov2.cli import main, make_shapes

    def warns(args):
        warnings.simplefilter("always")  # shown even when an earlier test warned from this line
        warnings.warn("excessive worker creation might get DataLoader running slow", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(make_shapes, "run", warns)
    assert main(["make-shapes", "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().err == "warning: excessive worker creation might get DataLoader running slow\n"
