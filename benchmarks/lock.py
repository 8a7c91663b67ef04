"""One writer per results folder: ``results/<suite>/sweep.lock``.

The lock file holds its holder (pid, host, start time, a random token) as JSON. It is created
whole and exclusively: the record goes to a scratch file first, which is then hard-linked to the
lock's name (``link`` fails when the name exists, so of two sweeps exactly one creates it, and
no reader ever sees a half-written lock). A second sweep finds the lock and refuses with one
line naming the holder.

A lock whose holder is gone (its pid no longer runs on this host, or runs a later process) is
stale and taken over: the taker first creates ``sweep.lock.takeover-<stale token>`` exclusively
(so of several takers exactly one goes on), checks that the lock still holds that stale token,
and renames its own record over it (one atomic replace: the lock never disappears in between).
A lock held on another host is never taken over (its pid cannot be checked from here).

``migbench sweep --processes P`` takes the lock in its launcher; the workers inherit it through
the environment (:data:`INHERITED`) and only check it is still the launcher's.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from migbench.processes import process_alive, process_started

LOCK_FILE = "sweep.lock"
INHERITED = "MIGBENCH_RESULTS_LOCK"  # the launcher's lock token, in its workers' environment
LAUNCHER_PID = "MIGBENCH_LAUNCHER_PID"  # the launcher's pid, in its workers' environment


class LockError(RuntimeError):
    """The results folder is another sweep's (one line naming it), or the lock was lost."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: ``pid`` on ``host`` (``pid_started``: its start in clock ticks since
    boot, where /proc tells, so a reused pid is not mistaken for it), since ``started``."""

    pid: int
    host: str
    started: str
    token: str
    pid_started: int | None = None

    @staticmethod
    def me() -> Holder:
        return Holder(pid=os.getpid(), host=socket.gethostname(),
                      started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                      token=secrets.token_hex(8), pid_started=process_started(os.getpid()))

    def alive(self) -> bool | None:
        """Whether the holder still runs; None when it is on another host (unknown)."""
        if self.host != socket.gethostname():
            return None
        return process_alive(self.pid, self.pid_started)

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} since {self.started}"


def _read(path: Path) -> Holder | None:
    """The holder recorded in ``path``; None when there is no lock."""
    try:
        return Holder(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise LockError(f"lock file {path} is not a migbench lock ({err}); delete it if no sweep writes to "
                        f"{path.parent}") from None


def _scratch_record(path: Path, holder: Holder) -> Path:
    """``holder`` written whole to a new scratch file beside ``path``."""
    scratch = path.with_name(f"{path.name}.{holder.pid}-{secrets.token_hex(4)}.new")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, (json.dumps(asdict(holder)) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return scratch


def _create(path: Path, holder: Holder) -> bool:
    """Create the lock for ``holder`` if there is none (atomic); False if there is one."""
    scratch = _scratch_record(path, holder)
    try:
        os.link(scratch, path)
        return True
    except FileExistsError:
        return False
    finally:
        scratch.unlink()


def _take_over(path: Path, stale: Holder, holder: Holder) -> bool:
    """Replace the lock of the gone ``stale`` by ``holder``'s; False if another taker won."""
    marker = path.with_name(f"{path.name}.takeover-{stale.token}")
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    try:
        current = _read(path)
        if current is None or current.token != stale.token:  # released, or already taken over
            return False
        os.replace(_scratch_record(path, holder), path)
        return True
    finally:
        marker.unlink()


def refusal(folder: Path, holder: Holder) -> str:
    """The one-line refusal naming the holder of ``folder``'s lock."""
    alive = holder.alive()
    where = "" if alive is not None else " (another host: its process cannot be checked from here)"
    return (f"results folder {folder} is being written by another sweep, {holder.describe()}{where}; "
            f"wait for it to finish, or delete {folder / LOCK_FILE} if that sweep is gone")


class ResultsLock:
    """This process's hold on a results folder (a context manager that releases it)."""

    def __init__(self, folder: Path, holder: Holder, *, owned: bool, created: bool,
                 took_over: Holder | None = None) -> None:
        self.folder = folder
        self.holder = holder
        self.owned = owned  # False when inherited from the launcher (which releases it)
        self.created = created  # the folder was made for this sweep
        self.took_over = took_over  # the gone holder whose stale lock this one replaced

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    @classmethod
    def acquire(cls, folder: Path, attempts: int = 5) -> ResultsLock:
        """Hold ``folder`` (made if missing) or raise :class:`LockError` naming its holder."""
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        me = Holder.me()
        path = folder / LOCK_FILE
        held = None
        for _ in range(attempts):
            if _create(path, me):
                return cls(folder, me, owned=True, created=created)
            held = _read(path)
            if held is None:  # released in between: try again
                continue
            if held.alive() is not False:
                raise LockError(refusal(folder, held))
            if _take_over(path, held, me):
                return cls(folder, me, owned=True, created=created, took_over=held)
            time.sleep(0.05)  # another taker is replacing it: look again
        if held is not None and held.alive() is False:
            raise LockError(f"results folder {folder} has a stale lock ({held.describe()}, gone) that another sweep "
                            f"is taking over, or whose takeover was interrupted: run again, or delete {path} and "
                            f"{path.name}.takeover-{held.token} there")
        raise LockError(refusal(folder, held) if held else f"could not lock {path}")

    @classmethod
    def inherit(cls, folder: Path, token: str) -> ResultsLock:
        """The launcher's lock on ``folder`` (token ``token``), checked to be still held."""
        held = _read(folder / LOCK_FILE)
        if held is None or held.token != token:
            raise LockError(f"results folder {folder} is not locked by this sweep's launcher "
                            f"({'no lock' if held is None else held.describe()}); run the sweep again")
        return cls(folder, held, owned=False, created=False)

    def check(self) -> None:
        """Raise :class:`LockError` unless the lock is still this sweep's (before each write)."""
        held = _read(self.path)
        if held is None or held.token != self.holder.token:
            raise LockError(f"lost the lock on {self.folder} "
                            f"({'removed' if held is None else 'now held by ' + held.describe()}); stopped")

    def release(self) -> None:
        """Remove the lock if this process took it (and the folder, if made for it and still empty);
        scratch files of gone takers go too."""
        if not self.owned:
            return
        held = _read(self.path)
        if held is not None and held.token == self.holder.token:
            self.path.unlink()
        if self.created:
            try:
                self.folder.rmdir()
            except OSError:  # not empty: the sweep wrote something
                pass

    def __enter__(self) -> ResultsLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
