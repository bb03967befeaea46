"""Bundled data, splits, batches, evaluation windows and the enwik8 download (against 127.0.0.1)."""

import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile

import numpy as np
import pytest

from minisynth import data as D


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ----------------------------------------------------------------------------- bundled
def test_bundled_length_checksum_and_start():
    data = D.load_bundled()
    assert data.dtype == np.uint8 and data.shape == (D.BUNDLED_SIZE,) == (1_048_576,)
    assert sha256(data.tobytes()) == D.BUNDLED_SHA256
    assert data[:10].tobytes() == b"<mediawiki"
    assert not data.flags.writeable


def test_bundled_checksum_mismatch_is_reported(monkeypatch):
    monkeypatch.setattr(D, "BUNDLED_SHA256", "0" * 64)
    with pytest.raises(D.DataError, match="corrupt"):
        D.load_bundled()


def test_load_data_bundled():
    splits, desc = D.load_data("bundled")
    assert {k: len(v) for k, v in splits.items()} == {
        "train": 943_718,
        "val": 52_428,
        "test": 52_430,
    }
    assert "bundled" in desc and "1,048,576" in desc


# ------------------------------------------------------------------------------ split
def test_split_sizes_and_views():
    data = np.arange(1000, dtype=np.int64).astype(np.uint8)
    s = D.split(data)
    assert [len(s[k]) for k in ("train", "val", "test")] == [900, 50, 50]
    assert all(np.shares_memory(v, data) for v in s.values())
    np.testing.assert_array_equal(np.concatenate([s["train"], s["val"], s["test"]]), data)
    s = D.split(np.zeros(1_048_576, np.uint8))
    assert [len(s[k]) for k in ("train", "val", "test")] == [943_718, 52_428, 52_430]


def test_split_full_enwik8_exact():
    data = np.zeros(D.ENWIK8_SIZE, np.uint8)
    s = D.split(data, full_enwik8=True)
    assert [len(s[k]) for k in ("train", "val", "test")] == [90_000_000, 5_000_000, 5_000_000]
    with pytest.raises(ValueError, match="exactly"):
        D.split(data[:-1], full_enwik8=True)


def test_split_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        D.split(np.zeros(100, np.int64))
    with pytest.raises(TypeError):
        D.split(b"abc" * 100)
    with pytest.raises(ValueError, match="1-D"):
        D.split(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="at least"):
        D.split(np.zeros(D.MIN_DATA_BYTES - 1, np.uint8))


# -------------------------------------------------------------------------- get_batch
def test_get_batch_shapes_shift_determinism():
    data = np.random.default_rng(0).integers(0, 256, 500).astype(np.uint8)
    x, y = D.get_batch(data, 8, 16, np.random.default_rng(1))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    for b in range(8):  # each row is a real window of the data
        s = next(i for i in range(len(data) - 16) if np.array_equal(data[i : i + 16], x[b]))
        np.testing.assert_array_equal(y[b], data[s + 1 : s + 17])
    x2, y2 = D.get_batch(data, 8, 16, np.random.default_rng(1))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_get_batch_uses_every_start_including_last():
    data = np.arange(11, dtype=np.uint8)  # T = 10: only start 0 is possible
    x, y = D.get_batch(data, 4, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(x, np.tile(np.arange(10), (4, 1)))
    np.testing.assert_array_equal(y, np.tile(np.arange(1, 11), (4, 1)))
    data = np.arange(13, dtype=np.uint8)
    x, _ = D.get_batch(data, 200, 10, np.random.default_rng(0))
    assert set(x[:, 0].tolist()) == {0, 1, 2}


def test_get_batch_errors():
    data = np.zeros(10, np.uint8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="block_size <= 9"):
        D.get_batch(data, 2, 10, rng)
    with pytest.raises(ValueError, match="batch_size"):
        D.get_batch(data, 0, 4, rng)
    with pytest.raises(TypeError, match="block_size"):
        D.get_batch(data, 2, 4.0, rng)
    with pytest.raises(TypeError, match="Generator"):
        D.get_batch(data, 2, 4, np.random.RandomState(0))
    with pytest.raises(TypeError, match="uint8"):
        D.get_batch(data.astype(np.int64), 2, 4, rng)


# ------------------------------------------------------------------------ eval windows
@pytest.mark.parametrize("n, T, B", [(101, 10, 3), (100, 10, 4), (11, 10, 1), (57, 7, 100)])
def test_eval_windows_cover_split_in_order(n, T, B):
    data = (np.arange(n) % 251).astype(np.uint8)
    batches = list(D.iter_eval_windows(data, T, B))
    W = (n - 1) // T
    assert all(x.shape[0] <= B and x.shape[1] == T for x, _ in batches)
    assert all(x.shape[0] == B for x, _ in batches[:-1])
    xs = np.concatenate([x.reshape(-1) for x, _ in batches])
    ys = np.concatenate([y.reshape(-1) for _, y in batches])
    assert xs.dtype == ys.dtype == np.int64
    # inputs and targets are the split walked in order, each target exactly once
    np.testing.assert_array_equal(xs, data[: W * T])
    np.testing.assert_array_equal(ys, data[1 : 1 + W * T])
    assert len(ys) == W * T and n - 1 - len(ys) < T


def test_eval_windows_validate_eagerly():
    with pytest.raises(ValueError, match="block_size"):
        D.iter_eval_windows(np.zeros(5, np.uint8), 5, 1)  # raises before iteration
    with pytest.raises(ValueError, match="batch_size"):
        D.iter_eval_windows(np.zeros(50, np.uint8), 5, 0)


# ------------------------------------------------------------------------- load_data
def test_load_data_local_file(tmp_path):
    payload = bytes(range(256)) * 4
    f = tmp_path / "text.bin"
    f.write_bytes(payload)
    splits, desc = D.load_data(str(f))
    assert sum(len(v) for v in splits.values()) == len(payload)
    assert splits["train"].tobytes() == payload[: len(payload) * 9 // 10]
    assert str(f) in desc
    splits2, _ = D.load_data(f)  # a Path works too
    np.testing.assert_array_equal(splits2["test"], splits["test"])


def test_load_data_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        D.load_data(str(tmp_path / "missing.txt"))
    with pytest.raises(IsADirectoryError, match="directory"):
        D.load_data(str(tmp_path))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(D.DataError, match="empty"):
        D.load_data(str(empty))
    small = tmp_path / "small"
    small.write_bytes(b"abc")
    with pytest.raises(D.DataError, match="at least"):
        D.load_data(str(small))
    with pytest.raises(TypeError):
        D.load_data(3)
    with pytest.raises(ValueError):
        D.load_data("")


def test_load_data_enwik8_missing_then_wrong_size_then_ok(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISYNTH_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="minisynth data fetch"):
        D.load_data("enwik8")
    (tmp_path / "enwik8").write_bytes(b"x" * 1000)
    with pytest.raises(D.DataError, match="100,000,000"):
        D.load_data("enwik8")
    with open(tmp_path / "enwik8", "r+b") as f:
        f.truncate(D.ENWIK8_SIZE)  # sparse: cheap to create
    splits, desc = D.load_data("enwik8")
    assert [len(splits[k]) for k in ("train", "val", "test")] == [90_000_000, 5_000_000, 5_000_000]
    assert "enwik8" in desc


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MINISYNTH_DATA", str(tmp_path / "d"))
    assert D.cache_dir() == tmp_path / "d"
    monkeypatch.delenv("MINISYNTH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.cache_dir() == tmp_path / "xdg" / "minisynth"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.cache_dir() == tmp_path / "home" / ".cache" / "minisynth"


# --------------------------------------------------------------------------- download
CONTENT = b"<mediawiki> a tiny stand-in for enwik8 </mediawiki>\n" * 50


def make_zip(member="enwik8", content=CONTENT):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, content)
    return buf.getvalue()


GOOD_ZIP = make_zip()
ROUTES = {
    "/enwik8.zip": GOOD_ZIP,
    "/other-member.zip": make_zip(member="enwik9"),
    "/not-a-zip": b"this is not a zip archive" * 10,
}


class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # bound every socket operation of the server side

    def do_GET(self):
        self.server.hits.append(self.path)
        if self.path == "/truncated.zip":
            # Promise more bytes than are sent, then close the connection.
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD_ZIP) + 1000))
            self.end_headers()
            self.wfile.write(GOOD_ZIP[: len(GOOD_ZIP) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        body = ROUTES.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A threaded HTTP server on 127.0.0.1 (random port); yields (base_url, hits)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.hits = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def fetch(url, dest, **kw):
    kw.setdefault("zip_sha256", sha256(GOOD_ZIP))
    kw.setdefault("data_sha256", sha256(CONTENT))
    return D.fetch_enwik8(url, dest, progress=False, timeout=5, **kw)


def test_fetch_ok_then_not_downloaded_again(server, tmp_path):
    base, hits = server
    dest = tmp_path / "cache"  # created by fetch
    path = fetch(base + "/enwik8.zip", dest)
    assert path == dest / "enwik8"
    assert path.read_bytes() == CONTENT
    assert os.listdir(dest) == ["enwik8"]  # no temporaries left
    assert hits == ["/enwik8.zip"]
    assert fetch(base + "/enwik8.zip", dest) == path
    assert hits == ["/enwik8.zip"]  # verified copy present: no second request


def test_fetch_default_dest_is_cache_dir_with_progress(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setenv("MINISYNTH_DATA", str(tmp_path))
    path = D.fetch_enwik8(
        base + "/enwik8.zip",
        zip_sha256=sha256(GOOD_ZIP),
        data_sha256=sha256(CONTENT),
        progress=True,
        timeout=5,
    )
    assert path == tmp_path / "enwik8" and path.read_bytes() == CONTENT


def test_fetch_replaces_corrupt_existing_file(server, tmp_path):
    base, hits = server
    (tmp_path / "enwik8").write_bytes(b"truncated")
    path = fetch(base + "/enwik8.zip", tmp_path)
    assert path.read_bytes() == CONTENT and hits == ["/enwik8.zip"]


@pytest.mark.parametrize(
    "route, kw, match",
    [
        ("/enwik8.zip", {"zip_sha256": "0" * 64}, "checksum mismatch"),
        ("/enwik8.zip", {"data_sha256": "1" * 64}, "checksum mismatch"),
        ("/other-member.zip", {"zip_sha256": sha256(ROUTES["/other-member.zip"])}, "no member"),
        ("/not-a-zip", {"zip_sha256": sha256(ROUTES["/not-a-zip"])}, "not a valid zip"),
    ],
)
def test_fetch_bad_download_leaves_nothing(server, tmp_path, route, kw, match):
    base, _ = server
    with pytest.raises(D.DataError, match=match):
        fetch(base + route, tmp_path, **kw)
    assert os.listdir(tmp_path) == []


def test_fetch_interrupted_transfer_leaves_nothing(server, tmp_path):
    base, _ = server
    with pytest.raises(OSError, match="interrupted"):
        fetch(base + "/truncated.zip", tmp_path)
    assert os.listdir(tmp_path) == []


def test_fetch_http_error_leaves_nothing(server, tmp_path):
    base, _ = server
    with pytest.raises(D.DownloadError, match="404"):
        fetch(base + "/missing.zip", tmp_path)
    assert os.listdir(tmp_path) == []


def test_fetch_connection_refused(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError, match="failed"):
        fetch(f"http://127.0.0.1:{port}/enwik8.zip", tmp_path)
    assert os.listdir(tmp_path) == []


def test_fetch_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="zip_sha256"):
        D.fetch_enwik8("http://127.0.0.1/x.zip", tmp_path, zip_sha256="abc", progress=False)
    with pytest.raises(TypeError, match="url"):
        D.fetch_enwik8(None, tmp_path, progress=False)
    with pytest.raises(ValueError, match="timeout"):
        D.fetch_enwik8("http://127.0.0.1/x.zip", tmp_path, timeout=0, progress=False)
    assert os.listdir(tmp_path) == []


def test_cli_data_fetch_rejects_a_wrong_download_and_leaves_nothing(server, tmp_path, capsys):
    """`minisynth data fetch` checks the official checksums: a small zip from a mirror fails."""
    from minisynth.cli import main

    base, _ = server
    code = main(["data", "fetch", "--url", f"{base}/enwik8.zip", "--dest", str(tmp_path),
                 "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "SHA-256" in err.upper() and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
