"""wasimoff dirfs storage: durable writes (temp file, fsync, rename, fsync of the directory)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rendezvous_wasimoff.storage import DirectoryStorage, ref_of

WASM = b"\x00asm\x01\x00\x00\x00" + bytes(range(256)) * 64


@pytest.fixture
def journal(monkeypatch):
    """Every fsync (what it was: a file or a directory, and its inode) and rename, in order."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.stat(src).st_ino, os.fspath(dst)))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_a_blob_and_the_index_are_written_durably(tmp_path, journal):
    store = DirectoryStorage(tmp_path)
    ref = store.put(WASM, "tool.wasm")
    blob, index = tmp_path / ref.split(":")[1], tmp_path / "lookup.json"
    directory = tmp_path.stat().st_ino
    # for each file: its data is on disk before the rename, and the rename before put() returns
    assert journal == [
        ("fsync", "file", blob.stat().st_ino), ("replace", blob.stat().st_ino, str(blob)), ("fsync", "dir", directory),
        ("fsync", "file", index.stat().st_ino), ("replace", index.stat().st_ino, str(index)), ("fsync", "dir", directory),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([blob.name, "lookup.json"])  # no temp files
    assert blob.read_bytes() == WASM
    assert json.loads(index.read_text()) == {"names": {"tool.wasm": ref}, "media": {ref: "application/wasm"}}
    again = DirectoryStorage(tmp_path)
    assert again.get("tool.wasm") == (WASM, "application/wasm", ref)


def test_an_identical_upload_writes_nothing(tmp_path, journal):
    store = DirectoryStorage(tmp_path)
    store.put(WASM, "tool.wasm")
    journal.clear()
    assert store.put(WASM, "tool.wasm") == ref_of(WASM)
    assert journal == []
    store.put(WASM, "other-name.wasm")  # only the index changes
    assert [e[:2] for e in journal] == [("fsync", "file"), ("replace", journal[1][1]), ("fsync", "dir")]
    assert journal[1][2].endswith("lookup.json")


def test_a_failed_write_leaves_no_temp_file_and_no_blob(tmp_path, monkeypatch):
    store = DirectoryStorage(tmp_path)

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        store.put(WASM, "tool.wasm")
    assert list(tmp_path.iterdir()) == []
    assert store.resolve("tool.wasm") is None


def test_leftovers_of_a_crash_are_cleaned_up_and_a_truncated_blob_is_rewritten(tmp_path):
    ref = ref_of(WASM)
    (tmp_path / ".incoming-abc123").write_bytes(WASM[:100])  # a write a crash interrupted
    (tmp_path / ref.split(":")[1]).write_bytes(b"")  # renamed before its data reached the disk
    store = DirectoryStorage(tmp_path)
    assert not (tmp_path / ".incoming-abc123").exists()
    assert store.put(WASM) == ref
    assert (tmp_path / ref.split(":")[1]).read_bytes() == WASM
