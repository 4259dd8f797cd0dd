"""Files and folders written safely: a directory written in full under ``<name>.new`` and
swapped in by renames (policy checkpoints, MAE checkpoints), one writer per path
(:class:`WriterLock`), ``overwrite`` that replaces only what the project made
(:func:`check_replaceable`), metadata read with a size cap (:func:`read_json`), and the sentence
for a full disk (:func:`disk_full_message`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Environment variable naming a crash point, ``name`` or ``name@N`` (its N-th time): crash tests
#: kill a process there, as a power cut would.
CRASH_ENV = "S2POLICY_CRASH_AT"
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die at once (no clean-up, exit status 137 as after SIGKILL) when ``$S2POLICY_CRASH_AT``
    names this point (``name@N``: the N-th time it is reached). The points: collection's
    ``store_create``, ``episode_data``, ``episode_meta``, ``episode_commit``
    (:mod:`s2policy.data.store`); caching's ``cache.create``, ``cache.chunk``,
    ``cache.done`` (:mod:`s2policy.features.cache`); a checkpoint's ``swap:checkpoint``
    (:func:`swap_in`)."""
    target = os.environ.get(CRASH_ENV)
    if not target:
        return
    want, _, nth = target.partition("@")
    if want != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= int(nth or 1):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)


def swap_in(new: Path, final: Path) -> Path:
    """Replace directory ``final`` by the fully written ``new`` with renames: ``final`` moves to
    ``<final>.old`` first, so a crash leaves either the previous or the new directory whole."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        crash_point(f"swap:{final.name}")  # the old one aside, the new one not yet in place
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------- one writer at a time
#: Largest holder note read from a lock file (it is a one-line JSON written by the holder).
_LOCK_NOTE_BYTES = 4096


class LockedError(RuntimeError):
    """Another process (or another object of this one) holds the writer's lock of a path."""


def lock_path(path: Path) -> Path:
    """The lock file of ``path``: ``.<name>.lock`` beside it (it covers creating ``path`` too),
    of the path with its symlinks resolved (one lock whichever way the path is written)."""
    path = Path(path).resolve()
    return path.parent / f".{path.name}.lock"


class WriterLock:
    """An exclusive advisory lock (``flock``) on ``.<name>.lock`` beside ``path``, for the whole
    time one writer changes ``path``; :meth:`release` (or the end of the process) frees it.

    The holder writes who it is (pid, host, command, start time) into the lock file, so a second
    writer is refused with one sentence naming it. The file is removed on release while still
    locked; an acquirer that locked a file removed meanwhile tries again, so two writers never
    both hold a lock. Readers take no lock (a store's commit record keeps them consistent).

    Network filesystems: Linux emulates ``flock`` on NFS with byte-range locks, which exclude
    writers on other machines when the server runs a lock manager (NFSv4, or NFSv3 with lockd);
    a filesystem mounted without locking (NFS ``nolock``, Lustre without ``flock``) excludes only
    the writers of one machine or none. Where the filesystem refuses locks, the writer goes on
    with a warning: keep to one writer per path yourself there.
    """

    def __init__(self, path: str | Path, what: str = "one writer at a time"):
        self.path = Path(path)
        self.file = lock_path(self.path)
        self._fd: int | None = None
        self._acquire(what)

    def _acquire(self, what: str) -> None:
        import fcntl
        import time

        self.file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:  # a folder not ours, a lock file of another user
                logger.warning(
                    "cannot open the lock file %s (%s): make sure no other process writes %s at "
                    "the same time",
                    self.file,
                    err.strerror,
                    self.path,
                )
                return
            try:
                # a reader's look at the lock (current_writer) holds it for a moment: retry
                # briefly before naming a holder
                for attempt in range(10):
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if attempt == 9:
                            raise
                        time.sleep(0.05)
            except BlockingIOError:
                note = _read_note(fd)
                os.close(fd)
                raise LockedError(
                    f"{self.path} is being written by {note}; {what}: wait for it to finish (or "
                    "stop it), then rerun"
                ) from None
            except OSError as err:  # ENOLCK / EOPNOTSUPP: a filesystem without locks
                os.close(fd)
                logger.warning(
                    "cannot lock %s (%s): the filesystem has no locks; make sure no other "
                    "process writes %s at the same time",
                    self.file,
                    err.strerror,
                    self.path,
                )
                return
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed this file after we opened it
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_holder()).encode())
            self._fd = fd
            return
        raise LockedError(f"could not lock {self.path}: its lock file {self.file} keeps changing")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file (still locked, so no one else holds it meanwhile) and unlock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.fstat(fd).st_ino == os.stat(self.file).st_ino:
                self.file.unlink()
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def current_writer(path: str | Path) -> str | None:
    """Who holds ``path``'s writer lock right now (``process 12 on host (...)``), or None. Takes
    nothing: the lock is tried and released at once, and no lock file is created."""
    import fcntl

    try:
        fd = os.open(lock_path(Path(path)), os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_note(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # closing frees a lock this call took
    return None


def _holder() -> dict:
    import socket
    import time

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:300],
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _read_note(fd: int) -> str:
    """'process 1234 on host (`command`, since ...)' from a lock file, or 'another process'."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        note = json.loads(os.read(fd, _LOCK_NOTE_BYTES).decode())
        where = f"process {int(note['pid'])} on {note['host']}"
        if int(note["pid"]) == os.getpid():
            where = f"this process (pid {note['pid']}: another writer object still open)"
        return f"{where} (`{note['command']}`, since {note['since']})"
    except Exception:  # noqa: BLE001  (written at this moment, or by hand)
        return "another process"


# ---------------------------------------------------------------------- replacing outputs
def check_replaceable(
    target: Path,
    recognized: bool,
    what: str,
    sources: Sequence[str | Path] = (),
) -> None:
    """Refuse to replace ``target`` (``overwrite=true``) unless it is something the project made
    (``recognized``: a store, a cache, an export it knows, an empty folder) and neither a source
    of the same command nor a folder holding one. ``what`` names what may be replaced."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    resolved = target.resolve()
    for source in sources:
        src = Path(source).resolve()
        if src == resolved:
            raise FileExistsError(
                f"{target} is the source of this command; overwrite=true would delete it: write "
                "to another path"
            )
        if resolved in src.parents:
            raise FileExistsError(
                f"{target} holds {source}, the source of this command; overwrite=true would "
                "delete it: write to another path"
            )
    if target.is_dir() and not any(target.iterdir()):
        return
    if not recognized:
        kind = "folder" if target.is_dir() else "file"
        held = ""
        if target.is_dir():
            names = sorted(p.name for p in target.iterdir())
            more = f", ... ({len(names)} entries)" if len(names) > 5 else ""
            held = f" holding {', '.join(names[:5])}{more}"
        raise FileExistsError(
            f"{target} is a {kind}{held} that is not {what}; overwrite=true replaces only "
            f"{what} written by s2policy: choose another output path, or move it away yourself"
        )


# ---------------------------------------------------------------------- small metadata files
#: Largest JSON metadata file read (policy.json, info.json, weights records): a larger one is
#: damaged or not ours, and is refused before it is read.
MAX_JSON_BYTES = 256 << 20


def read_json(path: str | Path, what: str, fix: str, limit: int = MAX_JSON_BYTES) -> Any:
    """Parse the JSON file ``path`` (``what`` names it, ``fix`` says what to do), refusing in one
    sentence a file that is too large, not UTF-8 text, or not valid JSON."""
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise ValueError(
            f"{path} has {size} bytes, more than any {what} may have ({limit >> 20} MiB): it is "
            f"damaged or not one; {fix}"
        )
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not text ({what} is UTF-8 JSON; byte {err.start} is not): it is "
            f"damaged; {fix}"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): the "
            f"{what} is damaged or truncated; {fix}"
        ) from None


# ---------------------------------------------------------------------- a full disk
class DiskFullError(OSError):
    """A write failed because the disk (or the quota) is full; its message is the one sentence."""


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from, is ENOSPC or EDQUOT."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full(err: BaseException, path: str | Path, rerun: str) -> DiskFullError | None:
    """The sentence for a full disk while writing ``path`` (``rerun``: what the user does once
    there is space), or ``None`` when ``err`` is something else."""
    import errno

    if not is_disk_full(err):
        return None
    full = DiskFullError(
        f"no space left on the device while writing {path}; free some space, then {rerun}"
    )
    full.errno = errno.ENOSPC
    return full


def save_tensors(tensors: dict, path: str | Path) -> None:
    """A safetensors file written by Python's own file I/O (a full disk raises ``OSError``
    ENOSPC, which the writers turn into their sentence)."""
    from safetensors.torch import save

    Path(path).write_bytes(save(tensors))


def save_state(state: Any, path: str | Path) -> None:
    """``torch.save`` into memory, then Python's file I/O (torch's own writer reports a full
    disk as ``enforce fail at inline_container.cc``, naming neither the cause nor the file)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(path).write_bytes(buffer.getbuffer())


def write_folder(new: Path, final: Path, write: Any, rerun: str) -> Path:
    """Write the folder ``new`` with ``write(new)`` and swap it in as ``final``
    (:func:`swap_in`); when writing fails, ``new`` is removed (``final`` is untouched) and a full
    disk becomes one sentence (``rerun``: what to do once there is space)."""
    shutil.rmtree(new, ignore_errors=True)
    try:
        new.mkdir(parents=True)
        write(new)
    except BaseException as err:
        shutil.rmtree(new, ignore_errors=True)
        if full := disk_full(err, new, rerun):
            raise full from err
        raise
    return swap_in(new, final)
