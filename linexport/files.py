"""File helpers shared by every stage (no torch, no onnx): atomic writes, crash-safe directory
publishing, hashes.

Temp names carry the writing process's pid — ``.{name}.linexport-{pid}-{random}.tmp`` (and
``.old`` for a directory being replaced) — and live *beside* the directory a user deploys, never
inside it. A run that was killed leaves such names behind; the next run that writes the same
target removes those whose process is gone (``clean_stale``) and, if the kill came between the
two renames of a directory swap on a system without an atomic exchange, puts the previous
directory back.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from linexport.errors import LinexportError

_MARK = "linexport"


def temp_name(target: Path, suffix: str = "tmp") -> str:
    return f".{target.name}.{_MARK}-{os.getpid()}-{uuid.uuid4().hex[:8]}.{suffix}"


def _stale_pattern(target: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(target.name)}\.{_MARK}-(\d+)-[0-9a-f]{{8}}\.(tmp|old)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def clean_stale(target, where=None) -> list[Path]:
    """Removes the temp files/directories that runs killed while writing ``target`` left in
    ``where`` (default: beside ``target``); if ``target`` is missing but a killed swap left the
    previous version aside, renames that back first. Returns what was removed."""
    target = Path(target)
    where = Path(where) if where is not None else target.parent
    pattern = _stale_pattern(target)
    removed = []
    try:
        entries = sorted(where.iterdir())
    except OSError:
        return removed
    for path in entries:
        m = pattern.match(path.name)
        if not m or _alive(int(m.group(1))):
            continue
        if m.group(2) == "old" and not os.path.lexists(target):
            os.rename(path, target)  # the swap was killed after moving the old one aside
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def atomic_write(path, write: Callable[[str], None], tmp_dir=None) -> None:
    """Calls ``write(tmp_path)`` on a temp file, then renames it into place. The temp file is
    made in ``tmp_dir`` (default: beside ``path``; pass the folder above an export directory so
    that nothing temporary ever lies inside the directory a user deploys — it must be on the
    same file system).

    A failure (or interruption) leaves any previous ``path`` untouched; a failure leaves no temp
    file behind, and the temp file of a killed run is removed by the next write of ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    where = Path(tmp_dir) if tmp_dir is not None else path.parent
    clean_stale(path, where)
    tmp = where / temp_name(path)
    tmp.touch()
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # as a plain open() would make it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_dir_beside(target) -> Path:
    """A fresh directory beside ``target`` to build its next version in (see ``publish_dir``)."""
    target = Path(target)
    clean_stale(target)
    path = target.parent / temp_name(target)
    path.mkdir()
    return path


def publish_dir(tmp, target) -> None:
    """Puts the finished directory ``tmp`` at ``target``, replacing what was there, so that a
    kill at any instant leaves either the old or the new version at ``target``: an atomic
    exchange of the two (Linux renameat2) and then removal of the old; where there is no
    atomic exchange, the old is renamed aside first and ``clean_stale`` restores it if the
    second rename never happened."""
    tmp, target = Path(tmp), Path(target)
    umask = _umask()
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp-style private modes: an export is ordinary output
    for path in tmp.iterdir():
        os.chmod(path, 0o666 & ~umask)
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous version
        return
    old = target.parent / temp_name(target, "old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # this kernel or file system cannot exchange
    raise OSError(err, os.strerror(err), str(b))


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_tokenizer_json(path) -> None:
    """A Hugging Face tokenizer.json must at least be a JSON object with a ``model``: garbage is
    refused where it enters (a conversion, an export), not when a runtime loads it."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LinexportError(f"expected {path} to be a Hugging Face tokenizer.json, got unreadable JSON "
                             f"({type(e).__name__}: {e}); fix or remove it") from None
    if not isinstance(data, dict) or "model" not in data:
        raise LinexportError(f"expected {path} to be a Hugging Face tokenizer.json (an object with a "
                             "'model'), got something else; fix or remove it")
