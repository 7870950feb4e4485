"""Write-then-rename outputs: all or nothing, usual permissions, dead runs' temps cleaned up."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fm9g.core.atomic import (
    OUTPUT_MARKER,
    PendingDirectory,
    atomic_directory,
    atomic_path,
    atomic_file,
    check_replaceable,
    remove_stale_temps,
    temp_sibling,
    write_json_atomic,
    write_text_atomic,
)
from fm9g.core.errors import Fm9gError


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_file_is_renamed_into_place_with_umask_permissions(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "out.bin"
    with atomic_file(target) as handle:
        handle.write(b"new")
        assert not target.exists() and temp_sibling(target).exists()
    assert target.read_bytes() == b"new" and _mode(target) == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.bin"]


def test_failed_file_leaves_the_old_one(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError), atomic_file(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(path.name for path in tmp_path.iterdir()) == ["out.txt"]


def test_json_is_indented_readable_and_ends_with_a_newline(tmp_path: Path) -> None:
    document = {"名前": [1, 2.5], "ok": None}
    path = write_json_atomic(tmp_path / "doc.json", document)
    assert path.read_text(encoding="utf-8") == json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def test_directory_appears_whole_or_not_at_all(tmp_path: Path, umask_022: None) -> None:
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(final, replace=False) as temp:
        (temp / "part").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(final, replace=False) as temp:
        (temp / "a").write_text("first")
    assert (final / "a").read_text() == "first" and _mode(final) == 0o755
    with atomic_directory(final, replace=True) as temp:
        (temp / "b").write_text("second")
    assert sorted(path.name for path in final.iterdir()) == [OUTPUT_MARKER, "b"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_force_replaces_only_what_fm9g_wrote(tmp_path: Path, monkeypatch) -> None:
    made = tmp_path / "made"
    with atomic_directory(made, replace=False) as temp:
        (temp / "a").write_text("x")
    check_replaceable(made)  # fm9g wrote it
    check_replaceable(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    check_replaceable(tmp_path / "file")
    foreign = tmp_path / "work"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(Fm9gError, match="only directories fm9g wrote"):
        check_replaceable(foreign)
    monkeypatch.chdir(made)
    with pytest.raises(Fm9gError, match="holds the current or home directory"):
        check_replaceable(Path("."))
    with pytest.raises(Fm9gError, match="holds the current or home directory"):
        check_replaceable(tmp_path)


def test_directory_that_appeared_meanwhile_is_kept_without_replace(tmp_path: Path) -> None:
    final = tmp_path / "out"
    pending = PendingDirectory(final, replace=False)
    final.mkdir()
    with pytest.raises(Fm9gError, match="appeared while building"):
        pending.publish()
    pending.discard()
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_stale_temps_of_dead_processes_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "out"
    dead_file = tmp_path / f".out.fm9g-tmp-{_dead_pid()}"
    dead_file.write_text("left by a killed run")
    dead_dir = tmp_path / f".out.fm9g-tmp-{_dead_pid()}-old"
    dead_dir.mkdir()
    live = tmp_path / f".out.fm9g-tmp-{os.getppid()}"
    live.write_text("another run still writing")
    other = tmp_path / f".other.fm9g-tmp-{_dead_pid()}"
    other.write_text("another output's temp")
    remove_stale_temps(target)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_published_files_are_readable_as_the_umask_says(tmp_path: Path, umask_022: None) -> None:
    """safetensors (and mkstemp) create files 0600; what fm9g publishes is group-readable as usual."""
    import torch
    from safetensors.torch import save_file

    with atomic_directory(tmp_path / "out", replace=False) as temp:
        save_file({"w": torch.zeros(2)}, str(temp / "model.safetensors"))
        (temp / "sub").mkdir()
        (temp / "sub" / "private").write_text("x")
        os.chmod(temp / "sub" / "private", 0o600)
    assert _mode(tmp_path / "out" / "model.safetensors") == 0o644
    assert _mode(tmp_path / "out" / "sub" / "private") == 0o644
    with atomic_path(tmp_path / "base.safetensors") as temp:
        save_file({"w": torch.zeros(2)}, str(temp))
    assert _mode(tmp_path / "base.safetensors") == 0o644
