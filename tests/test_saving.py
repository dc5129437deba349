"""Saving files: a checkpoint save that runs out of space is one error line, keeps what was saved, the
run resumes from the last complete checkpoint (needs root to mount a small tmpfs), and files follow
the umask."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from _train_data import read_metrics, train_tiny_cli
from solov2.checkpoint import atomic_save
from solov2.cli import main


def _mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted: list[Path] = []

    def make(size: int) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        _mount_tmpfs(path, size)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def test_atomic_save_names_the_file_and_the_reason(small_disk):
    disk = small_disk(64 * 1024)
    target = disk / "w.pth"
    atomic_save({"small": torch.zeros(10)}, target)
    before = target.read_bytes()
    with pytest.raises(OSError) as err:
        atomic_save({"big": torch.zeros(100_000)}, target)
    assert err.value.filename == str(target) and "No space left on device" in str(err.value)
    assert target.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["w.pth"]


def test_disk_full_during_training_then_resume(tmp_path, small_disk, capsys):
    probe = tmp_path / "probe"
    assert train_tiny_cli(tmp_path, probe, "--max-iters", "2") == 0
    size = (probe / "epoch_1.pth").stat().st_size
    # Room for epoch_1.pth and latest.pth, not for epoch_2.pth.
    run = small_disk(int(2.5 * size))
    capsys.readouterr()
    assert train_tiny_cli(tmp_path, run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "epoch_2.pth: No space left on device" in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pth") == ["epoch_1.pth", "latest.pth"]
    subprocess.run(["mount", "-o", f"remount,size={20 * size}", str(run)], check=True)
    assert main(["train", "--resume", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert [r["iteration"] for r in read_metrics(run)][-1] == 6
    assert (run / "final.pth").is_file() and (run / "epoch_3.pth").is_file()


def test_written_files_follow_the_umask(tmp_path):
    import stat

    from solov2.atomic import write_json_atomic

    previous = os.umask(0o027)
    try:
        write_json_atomic({"a": 1}, tmp_path / "m.json")
        atomic_save({"w": torch.zeros(2)}, tmp_path / "w.pth")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"m.json": 0o640, "w.pth": 0o640, "plain.txt": 0o640}
