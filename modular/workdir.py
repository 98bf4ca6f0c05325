"""A run's workdir: one run at a time, a config record that matches its checkpoints, a log of attempts.

A workdir holds checkpoints, `config.json` (the config those checkpoints and `results.json` belong to)
and `results.json`. Three rules keep it consistent whatever the user does:
- `lock`: a second run on a busy workdir refuses with one sentence naming the holder (an OS file lock,
  released by the kernel even when the holder is killed, so it never goes stale);
- `check_config`: resuming with a different config refuses, listing the differing keys, unless
  `resume_changed` is set, in which case the changes are recorded in results.json's `attempts`;
- `config.json` is written only when it describes what is there: a failed run never replaces the record
  of a finished one. A copy, `.config_record.json`, goes beside it, so deleting or corrupting config.json
  never disables the check; with neither readable, checkpoints are not resumed without `resume_changed`;
- `attempts.json` logs every run on the workdir as it starts and as it ends: finished, interrupted, failed
  (with its sentence) or diverged; a run that was killed is marked so by the next one.
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
CONFIG_FILE = "config.json"
RECORD_FILE = ".config_record.json"   # the checkpoints' own copy of config.json
ATTEMPTS_FILE = "attempts.json"
UNVERIFIED = "config record missing or unreadable: resumed without checking the config"
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


def recorded_config(workdir: str) -> dict | None:
    """The config the workdir's checkpoints and results belong to (its record, else config.json), or None."""
    for name in (RECORD_FILE, CONFIG_FILE):
        try:
            with open(os.path.join(workdir, name)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return None


def check_config(workdir: str, config: Mapping, *, resume_changed: bool) -> list[str]:
    """The config changes against the workdir's record ([] for a fresh workdir or the same config).

    Refuses (WorkdirError) when the workdir holds a run of another config, or a run whose config record is
    gone (config.json and its copy deleted or corrupt), unless `resume_changed`."""
    if not has_run(workdir):
        return []
    old = recorded_config(workdir)
    if old is None:
        if resume_changed:
            return [UNVERIFIED]
        raise WorkdirError(
            f"Workdir {workdir} holds checkpoints or results, but its config record ({CONFIG_FILE} and its copy "
            f"{RECORD_FILE}) is missing or unreadable, so they cannot be matched to this config; choose another "
            f"--workdir to start fresh, or pass --config.resume_changed=True to continue them anyway (the attempt "
            f"is logged as unverified).")
    changes = config_changes(old, config)
    if changes and not resume_changed:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise WorkdirError(f"Workdir {workdir} holds a run with another config ({shown}); pass "
                           f"--config.resume_changed=True to continue it with this config, or choose another --workdir.")
    return changes


def write_config(workdir: str, config: Mapping) -> None:
    for name in (RECORD_FILE, CONFIG_FILE):
        reporting.write_json(os.path.join(workdir, name), dict(config))


def previous_attempts(workdir: str) -> list[dict]:
    """The attempts logged on the workdir (attempts.json; results.json's log for older workdirs), or []."""
    for name, key in ((ATTEMPTS_FILE, None), ("results.json", "attempts")):
        try:
            with open(os.path.join(workdir, name)) as f:
                content = json.load(f)
            return [dict(a) for a in (content if key is None else content.get(key, []))]
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return []


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def start_attempt(workdir: str, changes: list[str]) -> list[dict]:
    """Log a run that starts now (status 'running'); an earlier one still 'running' died without ending
    (SIGKILL, a crash, a power cut): it is marked so. Call with the workdir's lock held."""
    attempts = previous_attempts(workdir)
    for a in attempts:
        if a.get("status") == "running":
            a["status"] = "killed"
            a["message"] = "ended without a record (killed, crashed, the machine stopped, or the disk was full)"
    attempts.append(dict(started=_now(), status="running", config_changes=list(changes), pid=os.getpid(),
                         host=socket.gethostname()))
    _write_attempts(workdir, attempts)
    return attempts


def end_attempt(workdir: str, status: str, message: str = "", **extra: Any) -> list[dict]:
    """Close the run `start_attempt` opened with its status (finished, interrupted, failed, diverged)."""
    attempts = previous_attempts(workdir) or [dict(started=_now(), config_changes=[])]
    attempts[-1].update(status=status, finished=_now(), **({"message": message} if message else {}), **extra)
    _write_attempts(workdir, attempts)
    return attempts


def _write_attempts(workdir: str, attempts: list[dict]) -> None:
    """Best effort: on a full or read-only disk the log cannot be written, and the run's own error says why."""
    try:
        reporting.write_json(os.path.join(workdir, ATTEMPTS_FILE), attempts)
    except OSError:
        pass
