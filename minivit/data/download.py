"""Download the official CIFAR archives into the cache folder, atomically and md5-checked.

The file is written to a temporary ``.part`` file in the destination folder, checked (length
and md5), then moved into place with ``os.replace``: a failed, cut or corrupt download never
leaves a file at the final path.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .cifar import DatasetError, _LAYOUT

__all__ = ["URLS", "MD5S", "DownloadError", "default_data_dir", "download_cifar", "download_url",
           "md5sum"]

URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
MD5S = {
    "cifar10": "c58f30108f718f92721af3b95e74349a",
    "cifar100": "eb9058c3a382ffc7106e4002c42a8d85",
}


class DownloadError(DatasetError):
    """A download failed, was cut short, or did not match its checksum."""


def default_data_dir() -> Path:
    """The cache folder: ``$MINIVIT_DATA`` if set, else ``~/.cache/minivit``."""
    env = os.environ.get("MINIVIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minivit"


def md5sum(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """The hex md5 of a file."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


STALE_PART_S = 3600.0  # a .part file untouched this long belongs to no running download


def sweep_stale_parts(dest: Path, max_age_s: float = STALE_PART_S) -> int:
    """Delete the ``.NAME.*.part`` files of ``dest`` that a killed download left behind (those
    not written for ``max_age_s`` seconds: a live download writes every second)."""
    now, removed = time.time(), 0
    for p in dest.parent.glob(f".{glob.escape(dest.name)}.*.part"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def download_url(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` atomically; check the length and, if given, the md5.

    Raises:
        DownloadError: network error, HTTP error, short body or md5 mismatch; nothing is left
            at ``dest`` (nor a temporary file) in that case.
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_parts(dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "minivit"})
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise DownloadError(
                    f"could not download {url}: {reason}; check the connection, or download it "
                    f"by hand and pass its path as the data argument"
                ) from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                got = 0
                with tqdm(total=total, desc=f"downloading {dest.name}", unit="B",
                          unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                          disable=not progress) as bar:
                    while True:
                        try:
                            chunk = response.read(chunk_size)
                        except (http.client.HTTPException, OSError) as e:
                            raise DownloadError(
                                f"download of {url} failed after {got} bytes "
                                f"({type(e).__name__}: {e}); try again"
                            ) from None
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
            if total is not None and got != total:
                raise DownloadError(
                    f"download of {url} was cut short: got {got} of {total} bytes; try again"
                )
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and h.hexdigest() != md5.lower():
            raise DownloadError(
                f"download of {url} is corrupt: md5 {h.hexdigest()} is not the expected {md5}; "
                f"nothing was saved to {dest}: try again"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def download_cifar(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    md5: str | None = "official",
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Make sure the archive of ``name`` (``"cifar10"`` or ``"cifar100"``) is in ``root``
    (default: :func:`default_data_dir`) and return its path.

    Args:
        url: where to download from (default: the official URL; tests use a local server).
        md5: ``"official"`` checks the published md5, a hex string checks that, ``None`` skips.
        force: download again even if the archive is already there.
    """
    if name not in URLS:
        raise ValueError(f"unknown dataset {name!r} to download; known: {', '.join(URLS)}")
    root = default_data_dir() if root is None else Path(root).expanduser()
    dest = root / _LAYOUT[name][1]
    if dest.is_file() and not force:
        return dest
    expected = MD5S[name] if md5 == "official" else md5
    return download_url(url or URLS[name], dest, expected, progress=progress)
