"""The run folder on disk, crash-consistent: one writer, one commit point per epoch.

A run folder holds ``config.json``, ``metrics.jsonl`` (one strict-JSON object per epoch) and
the checkpoints ``best.npz`` and ``last.npz``. Each epoch ends with, in this order:

1. its metrics line appended to ``metrics.jsonl`` (and flushed to disk);
2. ``best.npz`` written, if the test accuracy improved;
3. ``last.npz`` written: **the commit point**. ``last.npz`` says which epoch the run holds.

Every file is written to a temporary name, flushed, renamed over the old one, and the folder
is flushed after the rename (``checkpoint.atomic_write``), so a kill at any moment leaves each
file either old or new, never torn. On resume, ``metrics.jsonl`` is reconciled with
``last.npz``: lines past its epoch (written before a kill hit the commit) are dropped, and a
torn last line (a full disk, a kill during the append) is ignored with a warning. A kill
between steps 2 and 3 leaves ``best.npz`` one epoch ahead of ``last.npz``; the resumed run
repeats that epoch bit for bit and writes the same ``best.npz`` again.

One process at a time writes a run folder: it holds an exclusive ``flock`` on ``RUN/.lock``
(removed at the end; the kernel releases the lock when the process ends, however it ends). On start the writer sweeps
the temporary files (``.NAME.*.tmp``) an interrupted write left behind.
"""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer is up to you
    fcntl = None

METRICS = "metrics.jsonl"
LOCK = ".lock"


class TrainingError(RuntimeError):
    """A run cannot start or cannot go on (bad setting, NaN loss, unusable folder)."""


def show(path) -> str:
    """A path as printable text: bytes that are not UTF-8 (a folder name from another system)
    come out as ``\\xff`` escapes instead of failing the print."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# --- test-only crash points -------------------------------------------------------------------

_KILL_AT = os.environ.get("MINIVIT_TEST_KILL_AT")  # "POINT:N": SIGKILL at the Nth POINT
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """A named moment of a run (``last.npz:synced``, ``step``...). For the crash tests only:
    with ``MINIVIT_TEST_KILL_AT=NAME:N`` in the environment the process kills itself with
    SIGKILL the Nth time it gets here, as a ``kill -9`` at that exact moment would."""
    if _KILL_AT is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _KILL_AT == f"{name}:{_hits[name]}":
        os.kill(os.getpid(), signal.SIGKILL)


# --- files and folders -------------------------------------------------------------------------

def fsync_dir(path) -> None:
    """Flush a folder's entries (a rename, a new file) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files an interrupted write left: ``.NAME.*.tmp`` (checkpoints, metrics,
    config) and ``.NAME.*.part`` (downloads)."""
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(".") and p.name.endswith((".tmp", ".part")) and p.is_file())


def sweep(folder: Path, log=print) -> int:
    """Delete the stale temporary files of ``folder`` (call it holding the folder's lock);
    return how many there were."""
    found = stale_temporaries(folder)
    size = 0
    for p in found:
        try:
            size += p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            pass
    if found:
        log(f"removed {len(found)} temporary file{'s' * (len(found) > 1)} "
            f"({size / 1e6:.1f} MB) left in {show(folder)} by an interrupted write")
    return len(found)


class FolderLock:
    """An exclusive ``flock`` on ``RUN/.lock`` holding the writer's PID."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise TrainingError(
                    f"run folder {show(self.path.parent)} is in use by another minivit process "
                    f"(PID {holder}); wait for it to end, or choose another --out") from None
            try:  # the holder may have removed the file between our open and our flock
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file (still holding the lock) and release the lock. A writer
        killed before this leaves the file; the lock itself dies with the process."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None


# --- metrics.jsonl ---------------------------------------------------------------------------

def strict(value):
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """Strict JSON: NaN and infinities written as ``null``."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def read_log(path: Path, key: str | None = "epoch", warn=None) -> list[dict]:
    """The records of a JSON-lines log (``metrics.jsonl``, ``steps.jsonl``).

    A last line that is not valid JSON is a write cut short (a full disk, a kill): it is left
    out, with a warning through ``warn``. Any other bad line is an error naming the file and
    the line. Records are JSON objects, with an integer ``key`` >= 1 unless ``key`` is None."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TrainingError(f"{show(path)}: cannot be read ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    rows: list[dict] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        last = all(not rest.strip() for rest in lines[i + 1:])
        try:
            row = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
        except ValueError as exc:
            if last:
                if warn is not None:
                    warn(f"warning: {show(path)} line {i + 1} is cut short ({len(raw)} bytes, "
                         f"probably a write interrupted by a full disk or a kill); ignored")
                break
            raise TrainingError(f"{show(path)} line {i + 1}: not a JSON record ({exc})") from None
        if not isinstance(row, dict) or (key is not None and (
                type(row.get(key)) is not int or row[key] < 1)):
            want = "a JSON object" + (f" with an integer \"{key}\" >= 1" if key else "")
            raise TrainingError(f"{show(path)} line {i + 1}: expected {want}, got "
                                f"{raw[:60].decode('utf-8', 'replace')}")
        rows.append(row)
    return rows


def read_metrics(path: Path, warn=None) -> list[dict]:
    """The per-epoch records of a ``metrics.jsonl`` (see ``read_log``)."""
    return read_log(path, "epoch", warn)


def reconcile_log(path: Path, done: int, log=print, key: str = "epoch") -> list[dict]:
    """Make a log agree with a checkpoint after ``done`` epochs (``key="epoch"``) or steps
    (``key="step"``): drop the lines past it and a torn last line, keep one line per epoch or
    step (the last written). Rewrites the file (atomically) only when something changes;
    returns the kept records."""
    from .checkpoint import atomic_write

    if not path.exists():
        return []
    rows = read_log(path, key, warn=log)
    by_key = {r[key]: r for r in rows if r[key] <= done}
    kept = [by_key[k] for k in sorted(by_key)]
    text = "".join(dumps(r) + "\n" for r in kept).encode()
    if text != path.read_bytes():
        dropped = len(rows) - len(kept)
        if dropped:
            log(f"{show(path)}: dropped {dropped} line{'s' * (dropped > 1)} past the "
                f"checkpoint's {key} {done}")
        atomic_write(path, lambda f: f.write(text))
    return kept


def reconcile_metrics(path: Path, epochs_done: int, log=print) -> list[dict]:
    """``metrics.jsonl`` made to agree with a checkpoint after ``epochs_done`` epochs."""
    return reconcile_log(path, epochs_done, log, "epoch")


def append_record(path: Path, row: dict) -> None:
    """Append one record as a strict-JSON line (NaN as null), flushed to disk."""
    data = (dumps(row) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            half = len(data) // 2
            os.write(fd, data[:half])
            crash_point(f"{path.name}:torn")  # tests: a kill in the middle of the line
            os.write(fd, data[half:])
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


# --- the run folder --------------------------------------------------------------------------

class RunFolder:
    """The folder of one run, held by this process from ``open`` to ``close``.

    ``open`` creates the folder if needed, takes the lock, sweeps stale temporary files and
    decides what the folder holds: ``state`` is ``"new"`` (start a run), ``"resume"``
    (continue from ``last.npz``) or ``"restart"`` (a run interrupted before its first
    checkpoint: its saved config starts over from epoch 1)."""

    def __init__(self, path: str | os.PathLike, log=print):
        self.path = Path(path)
        self.log = log
        self.lock = FolderLock(self.path)
        self.created = False
        self.state = "new"
        self.committed_epoch: int | None = None  # the epoch last.npz holds

    @property
    def last(self) -> Path:
        return self.path / "last.npz"

    @property
    def best(self) -> Path:
        return self.path / "best.npz"

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    def open(self, resume: bool) -> "RunFolder":
        path = self.path
        try:
            self.created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
            probe = path / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            self.close(failed=True)
            raise TrainingError(f"cannot write to run folder {show(path)}: "
                                f"{exc.strerror or exc}; choose another --out") from None
        sweep(path, self.log)
        has_config, has_last = self.config.exists(), self.last.exists()
        if has_config and not has_last:
            # interrupted before its first checkpoint: nothing of it is worth keeping
            for p in (self.metrics, self.best):
                p.unlink(missing_ok=True)
            if resume:
                self.state = "restart"
                self.log(f"{show(path)} has no checkpoint yet (its run was interrupted before "
                         f"the end of epoch 1): starting that run from the beginning")
            else:
                self.config.unlink()
                self.log(f"{show(path)} held only the config of a run interrupted before its "
                         f"first checkpoint: reusing the folder for this new run")
        elif resume:
            self.state = "resume"
        elif has_config or has_last:
            self.close()
            raise TrainingError(f"run folder {show(path)} already holds a run; continue it "
                                f"with --resume {show(path)}, or choose another --out "
                                f"(nothing was changed)")
        return self

    def close(self, failed: bool = False) -> None:
        """Release the lock; after a failed start, remove the folder if this run created it
        and wrote nothing into it."""
        self.lock.release()
        if failed and self.created and self.path.is_dir() and not any(self.path.iterdir()):
            try:
                self.path.rmdir()
            except OSError:
                pass

    def commit(self, tree: dict, improved: bool) -> None:
        """End an epoch: ``best.npz`` (if it improved) then ``last.npz``, the commit point."""
        from .checkpoint import save_checkpoint

        if improved:
            save_checkpoint(self.best, tree)
        save_checkpoint(self.last, tree)
        self.committed_epoch = tree["epoch"]
        crash_point("committed")

    def holds(self) -> str:
        """Which epoch the folder's last checkpoint holds, as a clause for a stop message."""
        if self.committed_epoch is None:
            return (f"no checkpoint was written ({show(self.path)} holds only the config; "
                    f"--resume {show(self.path)} starts the run from the beginning)")
        return (f"the last good checkpoint {show(self.last)} holds epoch {self.committed_epoch}"
                f" (continue with --resume {show(self.path)})")


# --- consistency (the crash tests and tools/kill_campaign.py) ---------------------------------

def check_folder(path: str | os.PathLike) -> list[str]:
    """What is inconsistent in a run folder, at any moment a kill may have left it (empty if
    nothing): ``last.npz`` loads and its ``best_acc`` is the best test accuracy of the metric
    lines up to its epoch; those lines are epochs 1, 2, ... (at most one past the checkpoint,
    written just before a kill hit the commit); ``best.npz`` holds the first epoch with the
    best test accuracy, at most one past ``last.npz``; ``config.json`` loads."""
    from .checkpoint import CheckpointError, load_checkpoint

    run = Path(path)
    problems: list[str] = []
    try:
        rows = read_metrics(run / METRICS)
    except TrainingError as exc:
        return [str(exc)]
    epochs = [r["epoch"] for r in rows]
    if epochs != list(range(1, len(epochs) + 1)):
        problems.append(f"metrics epochs {epochs} are not 1, 2, ...")
    acc = {r["epoch"]: r.get("test_acc") for r in rows}
    last = best = None
    try:
        last = load_checkpoint(run / "last.npz") if (run / "last.npz").exists() else None
        best = load_checkpoint(run / "best.npz") if (run / "best.npz").exists() else None
    except CheckpointError as exc:
        problems.append(str(exc))
    if (run / "last.npz").exists() or (run / "best.npz").exists():
        try:
            json.loads((run / "config.json").read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"config.json: {exc}")
    done = last["epoch"] if last is not None else 0
    if not done <= len(epochs) <= done + 1:
        problems.append(f"metrics hold epochs {epochs} but last.npz holds epoch {done}")
    if last is not None:
        top = max(acc[e] for e in range(1, done + 1)) if done else -1.0
        if last["best_acc"] != top:
            problems.append(f"last.npz best_acc {last['best_acc']} != best test_acc {top} of "
                            f"epochs 1..{done}")
        if best is None:
            problems.append("last.npz exists but best.npz does not")
    if best is not None:
        b = best["epoch"]
        if not 1 <= b <= done + 1 or b not in acc:
            problems.append(f"best.npz holds epoch {b}; last.npz {done}, metrics {epochs}")
        else:
            first_top = max(range(1, b + 1), key=lambda e: (acc[e], -e))
            if best["best_acc"] != acc[b] or first_top != b:
                problems.append(f"best.npz (epoch {b}, acc {best['best_acc']}) is not the best "
                                f"metrics line up to it (epoch {first_top}, acc {acc[first_top]})")
            if b <= done and last is not None and last["best_acc"] != best["best_acc"]:
                problems.append("best.npz and last.npz disagree on best_acc")
    return problems
