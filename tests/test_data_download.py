"""Downloads against a local HTTP server on 127.0.0.1 (never the real network)."""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from minivit.data import DatasetError, DownloadError, download_cifar, download_url, load_dataset
from minivit.data import download as download_module

GOOD = bytes(range(256)) * 4000  # about 1 MB, several chunks


class Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/truncated":  # promise more than is sent, then hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "not here")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    Handler.files = {"/good.bin": GOOD, "/corrupt.bin": GOOD[:-1] + b"\x00"}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_good_download(server, tmp_path, capsys):
    dest = tmp_path / "sub" / "good.bin"
    assert download_url(f"{server}/good.bin", dest, md5(GOOD), chunk_size=65536) == dest
    assert dest.read_bytes() == GOOD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["good.bin"]
    assert "downloading good.bin" in capsys.readouterr().err


def test_truncated_download_fails_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "t.bin"
    with pytest.raises(DownloadError, match=r"cut short.*of 1024000 bytes"):
        download_url(f"{server}/truncated", dest, None, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_download_fails_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "c.bin"
    with pytest.raises(DownloadError, match=f"md5 .* is not the expected {md5(GOOD)}"):
        download_url(f"{server}/corrupt.bin", dest, md5(GOOD), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_download_keeps_an_existing_file(server, tmp_path):
    dest = tmp_path / "c.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError):
        download_url(f"{server}/corrupt.bin", dest, md5(GOOD), progress=False)
    assert dest.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_http_and_connection_errors(server, tmp_path):
    with pytest.raises(DownloadError, match="could not download.*404|Not Found|not here"):
        download_url(f"{server}/missing", tmp_path / "m.bin", progress=False)
    # a port nobody listens on: connection refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="could not download"):
        download_url(f"http://127.0.0.1:{port}/x", tmp_path / "x.bin", progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []
    assert issubclass(DownloadError, DatasetError)


def test_download_cifar_uses_url_md5_and_cache(server, tmp_path):
    path = download_cifar("cifar10", tmp_path, url=f"{server}/good.bin", md5=md5(GOOD),
                          progress=False)
    assert path == tmp_path / "cifar-10-python.tar.gz" and path.read_bytes() == GOOD
    # present: not downloaded again (the URL would fail)
    assert download_cifar("cifar10", tmp_path, url=f"{server}/missing", progress=False) == path
    # the official md5 is checked by default
    with pytest.raises(DownloadError, match="c58f30108f718f92721af3b95e74349a"):
        download_cifar("cifar10", tmp_path / "other", url=f"{server}/good.bin", md5="official",
                       progress=False)
    assert not (tmp_path / "other" / "cifar-10-python.tar.gz").exists()
    with pytest.raises(DownloadError, match="eb9058c3a382ffc7106e4002c42a8d85"):
        download_cifar("cifar100", tmp_path, url=f"{server}/good.bin", progress=False)
    assert not (tmp_path / "cifar-100-python.tar.gz").exists()
    with pytest.raises(ValueError, match="unknown dataset"):
        download_cifar("cifar10-subset", tmp_path)


def test_load_dataset_downloads_into_cache(server, tmp_path, monkeypatch):
    from test_data_cifar import make_tar, write_cifar10, assert_same

    folder, expected = write_cifar10(tmp_path / "src")
    archive = make_tar(folder, tmp_path / "served.tar.gz").read_bytes()
    Handler.files["/cifar-10-python.tar.gz"] = archive
    monkeypatch.setitem(download_module.URLS, "cifar10", f"{server}/cifar-10-python.tar.gz")
    monkeypatch.setitem(download_module.MD5S, "cifar10", md5(archive))
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINIVIT_DATA", str(cache))
    assert_same(load_dataset("cifar10", progress=False), expected)
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == archive
    np.testing.assert_array_equal(load_dataset("cifar10").y_test, expected.y_test)  # cached


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path))
    assert download_module.default_data_dir() == tmp_path
    monkeypatch.delenv("MINIVIT_DATA")
    assert download_module.default_data_dir() == Path.home() / ".cache" / "minivit"
