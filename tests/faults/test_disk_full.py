"""The disk fills up while a stage exports: its outputs folder is a small tmpfs that holds the previous
export but not a second copy beside it (an export writes beside the old folder, then renames)."""

from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from pixart.train import export
from pixart.train.trainer import train
from tests.faults import harness


def _mount(folder: Path, size: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          check=False).returncode == 0


def _resize(folder: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


@contextmanager
def small_disk(folder: Path, monkeypatch):
    """``folder`` on a tmpfs of its own; yields a function that leaves ``extra`` bytes free on it.
    Where mounting is not allowed (no root, no CAP_SYS_ADMIN), the export's component copy raises
    ENOSPC instead: the same error at the same place, without a real file system behind it."""
    if _mount(folder, 64 << 20):
        try:
            yield lambda extra: _resize(folder, _used(folder) + extra)
        finally:
            subprocess.run(["umount", str(folder)], check=False)
        return

    def fill(extra: int) -> None:
        def full(src, dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

        monkeypatch.setattr(export, "link_tree", full)

    yield fill


def _used(folder: Path) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_disk_full_while_exporting_keeps_the_previous_export_and_the_checkpoint(embedded, record, monkeypatch):
    root = embedded
    harness.world(root)
    disk = root / "small-disk"
    with small_disk(disk, monkeypatch) as leave_free:
        job = harness.stage_job(root, out_dir=disk / harness.STAGE)
        previous = train(job)  # the export DVC holds now
        before = harness.kept(job)
        leave_free(_size(previous) // 2)

        with pytest.raises(export.ExportError) as failed:
            train(job)  # resumes at the last step: trains nothing, exports again
        message = str(failed.value)
        assert message.startswith(f"{job.out_dir}: writing the stage folder failed")
        assert "previous" in message and str(job.state_dir) in message
        after = harness.kept(job)
        assert after == before
        assert [p.name for p in disk.iterdir()] == [harness.STAGE]  # the half-written copy is gone

    record("disk full while exporting", "ExportError names the folder; previous export + checkpoint kept",
           before, after)
