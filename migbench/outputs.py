"""Output paths checked before any work, and outputs that appear whole or not at all.

- :func:`check_folder` / :func:`check_file`: an output path the command will write is refused
  (:class:`OutputError`, one line naming the option and the path) when it is of the wrong kind
  (a file where a folder goes, or the reverse) or cannot be written (read-only, no such
  filesystem), before the command samples or scores anything. Writability is probed by creating
  (and removing) a file, so it holds for root and for read-only mounts too.
- :func:`replaced_folder`: a folder built beside its target, then swapped in with one atomic
  exchange (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, undone by the next
  run if a kill falls between them); a killed build leaves the old folder whole.
- :func:`files_into`: files built in a folder beside their target folder, then moved in together.
- :func:`write_text_atomic`: a text file written beside itself, then renamed over it.

Scratch names are ``.NAME.staging-PID-TOKEN`` (and ``.NAME.old-PID-TOKEN``): what a killed run
left is removed (or restored) by the next run once its pid is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from migbench.processes import process_alive


class OutputError(ValueError):
    """An output path the command cannot write (one line: the option, the path, why)."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder(path: Path, option: str) -> None:
    """``path`` is a folder this process can write, or can be created as one."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder: give a folder")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise OutputError(f"{option} {path}: {base} is a file, so no folder can be made there")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".migbench-probe-")
    except OSError as err:
        raise OutputError(f"{option} {path}: cannot write in {base} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_file(path: Path, option: str) -> None:
    """``path`` is a file this process can write (it may exist; its folder may be missing)."""
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder, not a file: give a file name, e.g. {path / 'eval.json'}")
    check_folder(path.parent, option)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a scratch file beside it and one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _scratch(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _leftovers(target: Path, kind: str) -> list[Path]:
    """Scratch folders of ``kind`` beside ``target`` whose process is gone."""
    found = []
    prefix = f".{target.name}.{kind}-"
    for path in target.parent.iterdir() if target.parent.is_dir() else ():
        if not path.name.startswith(prefix):
            continue
        pid = path.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            found.append(path)
    return found


def _recover(target: Path) -> None:
    """Undo what a killed run left beside ``target``: an old folder moved aside and never
    replaced goes back; staging and old folders of gone processes are removed."""
    for old in _leftovers(target, "old"):
        if not target.exists():
            os.rename(old, target)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for staging in _leftovers(target, "staging"):
        shutil.rmtree(staging, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(a))


def _swap_in(staged: Path, target: Path) -> None:
    """Make the folder ``staged`` appear at ``target``, removing what was there."""
    if not target.exists():
        os.rename(staged, target)
    elif _exchange(staged, target):
        shutil.rmtree(staged)
    else:
        old = _scratch(target, "old")
        os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old)


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[tuple[Path, Path]]:
    """(absolute ``target``, an empty folder beside it); on an error the folder goes and the
    error passes on, leaving ``target`` as it was."""
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    staged = _scratch(target, "staging")
    staged.mkdir()
    try:
        yield target, staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


@contextlib.contextmanager
def replaced_folder(target: Path) -> Iterator[Path]:
    """An empty folder beside ``target`` to build into; on success it replaces ``target`` whole,
    on an error it goes and ``target`` stays as it was."""
    with _staging(target) as (target, staged):
        yield staged
    _swap_in(staged, target)


@contextlib.contextmanager
def files_into(target: Path, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """An empty folder beside ``target`` to write files into; on success they appear in
    ``target`` together, and the files named in ``replaces`` that were derived from the old ones
    (not written again) go. A missing ``target``, or one holding only such files, is swapped in
    whole (atomic); a folder holding other files (or the working directory) gets the old set
    removed first, then the new files renamed in one by one, so old and new never mix."""
    with _staging(target) as (target, staged):
        yield staged
    written = sorted(p.name for p in staged.iterdir())
    ours = {*written, *replaces}
    if not target.exists() or ({p.name for p in target.iterdir()} <= ours
                               and not Path.cwd().is_relative_to(target)):
        _swap_in(staged, target)
        return
    for name in ours:
        (target / name).unlink(missing_ok=True)
    for name in written:
        os.replace(staged / name, target / name)
    staged.rmdir()
