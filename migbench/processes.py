"""Processes of this host: is a pid still the process it was, and dying with a parent."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from pathlib import Path


def process_started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that is
    not known (no /proc, no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def parent_of(pid: int) -> int | None:
    """The parent pid of process ``pid`` (from /proc), or None where that is not known."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not); given its ``started``
    (:func:`process_started`), a later process that reused the pid does not count."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X") and (started is None or process_started(pid) == started)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def preload_libc() -> None:
    """Load the C library now (Linux), so that :func:`die_with_parent` run in a child between
    fork and exec (``preexec_fn``) need not load it there."""
    if sys.platform.startswith("linux"):
        _libc()


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent (the thread that started it)
    exits (``prctl(PR_SET_PDEATHSIG)``), and exit now if that parent, pid ``parent``, is already
    gone. A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    if _libc().prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the prctl: this process was handed to a reaper
        os._exit(1)


def die_with_launcher(launcher: int) -> None:
    """In a worker started by a process that ``launcher`` started (``accelerate launch`` under
    ``migbench sweep --processes``): die with the parent (:func:`die_with_parent`, which itself
    dies with ``launcher``), and exit now if the parent is no longer the launcher's child."""
    parent = os.getppid()
    die_with_parent(parent)
    if parent_of(parent) not in (launcher, None):  # the launch was gone before the prctl
        os._exit(1)
