"""Crash-safe writes (linexport/files.py): a run killed at any point leaves the previous output in
place, nothing temporary inside the directory a user deploys, and leftovers the next run removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from linexport import files
from linexport.files import atomic_write, clean_stale, publish_dir, temp_dir_beside, temp_name
from tests.conftest import tiny_linear_export


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _snapshot(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_publish_replaces_and_leaves_nothing_beside(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # the path other systems take
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    new = temp_dir_beside(target)
    (new / "a").write_text("new")
    publish_dir(new, target)
    assert (target / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_swap_killed_between_its_renames_is_undone_by_the_next_run(tmp_path):
    """Without an atomic exchange the old export is renamed aside first; a kill before the new one
    is renamed in leaves no OUT — the next run puts the old one back."""
    target = tmp_path / "out"
    aside = tmp_path / f".out.linexport-{_dead_pid()}-0123abcd.old"
    aside.mkdir()
    (aside / "linexport.json").write_text("{}")
    clean_stale(target)
    assert (target / "linexport.json").read_text() == "{}" and not aside.exists()


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    dead = tmp_path / f".out.linexport-{_dead_pid()}-0123abcd.tmp"
    dead.mkdir()
    (dead / "prefill.onnx").write_bytes(b"partial")
    mine = tmp_path / temp_name(target)  # this process is alive: never someone's leftover
    mine.mkdir()
    unrelated = tmp_path / ".out.somebody-else.tmp"
    unrelated.mkdir()
    assert clean_stale(target) == [dead]
    assert mine.exists() and unrelated.exists()


_KILLED_EXPORT = """
import os, signal, sys
from linexport.export.exporter import export_checkpoint

def log(message):
    if message.startswith(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)

export_checkpoint(sys.argv[1], sys.argv[2], log=log)
"""


@pytest.fixture(scope="module")
def first_export(tmp_path_factory):
    """A tiny checkpoint and its export (made once: tracing is the slow part)."""
    return tiny_linear_export(tmp_path_factory.mktemp("first"))


@pytest.mark.parametrize("at", ["checking and writing decode.onnx", "wrote"])
def test_an_export_killed_midway_keeps_the_previous_one(first_export, tmp_path, at):
    import shutil

    from linexport.export.exporter import export_checkpoint
    from linexport.runtime import Model

    checkpoint, first = first_export
    out = tmp_path / "out"
    shutil.copytree(first, out)
    before = _snapshot(out)

    result = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(checkpoint), str(out), at])
    assert result.returncode == -signal.SIGKILL
    assert _snapshot(out) == before  # "wrote" comes after the swap: the new export is byte-equal
    Model(out)  # and it opens
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert all(".linexport-" in name for name in leftovers)
    if at != "wrote":
        assert leftovers, "the killed run should have left its temp directory"

    export_checkpoint(checkpoint, out)  # the next run cleans up after the killed one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_puts_its_temp_file_where_asked_and_cleans_it_later(tmp_path):
    deploy, beside = tmp_path / "deploy", tmp_path
    deploy.mkdir()
    code = ("import os, signal, sys\nfrom linexport.files import atomic_write\n"
            "def write(tmp):\n    open(tmp, 'wb').write(b'half')\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "atomic_write(sys.argv[1], write, sys.argv[2])\n")
    result = subprocess.run([sys.executable, "-c", code, str(deploy / "prefill.engine"), str(beside)])
    assert result.returncode == -signal.SIGKILL
    assert list(deploy.iterdir()) == []  # nothing half-written inside what ships
    assert any(p.name.startswith(".prefill.engine.linexport-") for p in beside.iterdir())
    atomic_write(deploy / "prefill.engine", lambda tmp: Path(tmp).write_bytes(b"whole"), beside)
    assert (deploy / "prefill.engine").read_bytes() == b"whole"
    assert sorted(p.name for p in beside.iterdir()) == ["deploy"]
    assert os.stat(deploy / "prefill.engine").st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
