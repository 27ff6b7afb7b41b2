"""Atomic writes: the data and the rename are on disk before atomic_write returns; a failure leaves nothing."""

import os

import pytest

from gptjax import files


def test_atomic_write_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    """Without the fsyncs a power cut can leave the final name on an empty file. The real fsync runs;
    the spy only records what each call synced."""
    synced, real_fsync = [], os.fsync

    def spy(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "metrics.json"
    target.write_text("old")
    files.atomic_write(target, "new")
    assert target.read_text() == "new"
    # The new file's data (renamed since to the final name), then the folder holding the rename.
    assert synced == [target.stat().st_ino, tmp_path.stat().st_ino]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        files.atomic_write(target, "half \udc80 written")  # a lone surrogate cannot be encoded: fails mid-write
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
