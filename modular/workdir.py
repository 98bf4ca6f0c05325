"""A run's workdir: one run at a time, a config record that matches its checkpoints, a log of attempts.

A workdir holds checkpoints, `config.json` (the config those checkpoints and `results.json` belong to)
and `results.json`. Three rules keep it consistent whatever the user does:
- `lock`: a second run on a busy workdir refuses with one sentence naming the holder (an OS file lock,
  released by the kernel even when the holder is killed, so it never goes stale);
- `check_config`: resuming with a different config refuses, listing the differing keys, unless
  `resume_changed` is set, in which case the changes are recorded in results.json's `attempts`;
- `config.json` is written only when it describes what is there: a failed run never replaces the record
  of a finished one.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Any, Iterator, Mapping

from flax import traverse_util

from modular import reporting

LOCK_FILE = ".lock"
# Keys that do not change what a run computes: a resume may change them freely.
IGNORED_ON_RESUME = ("resume_changed", "log_every", "verbose", "compilation_cache")


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (busy, not a directory, not writable, another run's config)."""


def prepare(workdir: str) -> str:
    """Create `workdir` (and parents) or fail with one sentence; returns its absolute path."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory; choose a directory.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"Cannot create --workdir {workdir} ({e.strerror}); choose a writable directory.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} is not writable; choose a writable directory.")
    return path


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
    """Hold the workdir's lock for the block; WorkdirError if another process holds it."""
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirError(f"Workdir {workdir} is in use by {holder}; wait for that run to end or choose "
                               f"another --workdir.") from None
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {started})".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (its content says who held it last)


def has_run(workdir: str) -> bool:
    """Whether the workdir holds anything a config describes: results or a saved checkpoint step."""
    if os.path.exists(os.path.join(workdir, "results.json")):
        return True
    return latest_checkpoint(workdir) is not None


def latest_checkpoint(workdir: str) -> tuple[str, int] | None:
    """(checkpoint directory, step) of the most recently written checkpoint anywhere under workdir."""
    best = None
    for root, dirs, _ in os.walk(workdir):
        if os.path.basename(root) != "checkpoints":
            continue
        for d in dirs:
            if d.isdigit():
                mtime = os.path.getmtime(os.path.join(root, d))
                if best is None or mtime > best[0]:
                    best = (mtime, root, int(d))
        dirs[:] = []
    return None if best is None else (best[1], best[2])


def config_changes(old: Mapping, new: Mapping) -> list[str]:
    """'key: old -> new' for every key that differs (added and removed keys included), ignored keys left out."""
    a, b = (traverse_util.flatten_dict(json.loads(json.dumps(c, default=str)), sep=".") for c in (old, new))
    keys = sorted(k for k in set(a) | set(b) if k not in IGNORED_ON_RESUME and a.get(k, "<unset>") != b.get(k, "<unset>"))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys]


def check_config(workdir: str, config: Mapping, *, resume_changed: bool) -> list[str]:
    """The config changes against the workdir's record ([] for a fresh workdir or the same config).

    Refuses (WorkdirError) when the workdir holds a run of another config, unless `resume_changed`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or not has_run(workdir):
        return []
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        raise WorkdirError(f"{path} is unreadable, so this workdir's checkpoints cannot be matched to a config; "
                           f"move it away or choose another --workdir.") from None
    changes = config_changes(old, config)
    if changes and not resume_changed:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise WorkdirError(f"Workdir {workdir} holds a run with another config ({shown}); pass "
                           f"--config.resume_changed=True to continue it with this config, or choose another --workdir.")
    return changes


def write_config(workdir: str, config: Mapping) -> None:
    reporting.write_json(os.path.join(workdir, "config.json"), dict(config))


def previous_attempts(workdir: str) -> list[dict]:
    """The `attempts` log of the workdir's results.json ([] if there is none or it is unreadable)."""
    try:
        with open(os.path.join(workdir, "results.json")) as f:
            return list(json.load(f).get("attempts", []))
    except (OSError, ValueError, AttributeError):
        return []


def attempt_record(started: datetime.datetime, changes: list[str], **extra: Any) -> dict:
    return dict(started=started.isoformat(timespec="seconds"),
                finished=datetime.datetime.now().isoformat(timespec="seconds"), config_changes=changes, **extra)
