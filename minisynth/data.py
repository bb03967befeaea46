"""Byte-level enwik8 data: the bundled prefix, the full download, splits and batches.

Data is a 1-D ``uint8`` array of raw bytes (vocabulary V = 256). Three sources:

* ``"bundled"``: the first 1,048,576 bytes of enwik8, shipped gzipped inside the
  package (``minisynth/corpus/``; provenance and checksums in ``SOURCE.md``);
* ``"enwik8"``: the full 100,000,000-byte file, downloaded once with
  :func:`fetch_enwik8` (``minisynth data fetch``) into :func:`cache_dir`;
* any local file, read as bytes.

Splits are the usual 90% / 5% / 5% (train / val / test) in file order; for the
full enwik8 that is exactly 90M / 5M / 5M bytes.

Shape letters follow :mod:`minisynth.layers` (B batch, T block/sequence length).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm  # a widget in notebooks, a text bar in terminals

from ._validate import check_positive_int

BUNDLED_NAME = "enwik8-prefix-1048576.gz"
BUNDLED_SIZE = 1_048_576
BUNDLED_SHA256 = "4fb5efa9f35df431737731bf3c8f38a467b69731940ff82a4ee0e218aae58834"

OFFICIAL_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_ZIP_SHA256 = "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"
ENWIK8_SHA256 = "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"
ENWIK8_SIZE = 100_000_000
ENWIK8_MEMBER = "enwik8"
ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)

# Smallest data a split can use: 90/5/5 of 40 bytes leaves 2 bytes (one input and
# one target) in each of val and test.
MIN_DATA_BYTES = 40

_CHUNK = 1 << 20


class DataError(ValueError):
    """A data file or download has the wrong checksum, size or format."""


class DownloadError(OSError):
    """A download failed (network error, HTTP error or an interrupted transfer)."""


# ------------------------------------------------------------------------- helpers
def _check_bytes_array(name, data):
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of uint8 bytes, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (raw bytes), got {data.dtype}")
    if data.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {data.shape}")
    return data


def _check_sha256(name, value):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a hex string, got {type(value).__name__}")
    value = value.lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{name} must be 64 hexadecimal digits (a SHA-256), got {value!r}")
    return value


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _unlink_quietly(path):
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------- bundled data
def load_bundled():
    """The bundled first 1,048,576 bytes of enwik8 as a read-only 1-D uint8 array.

    Read from the package (``importlib.resources``), gunzipped, and checked
    against :data:`BUNDLED_SHA256`; raises :class:`DataError` if the bytes differ.
    """
    resource = resources.files("minisynth") / "corpus" / BUNDLED_NAME
    try:
        packed = resource.read_bytes()
    except FileNotFoundError as err:
        raise DataError(
            f"the bundled data file minisynth/corpus/{BUNDLED_NAME} is missing; reinstall minisynth"
        ) from err
    try:
        raw = gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"the bundled data file {BUNDLED_NAME} is not valid gzip: {err}") from err
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BUNDLED_SHA256:
        raise DataError(
            f"the bundled data file {BUNDLED_NAME} is corrupt: SHA-256 of its "
            f"{len(raw):,} decompressed bytes is {digest}, expected {BUNDLED_SHA256} "
            f"({BUNDLED_SIZE:,} bytes); reinstall minisynth"
        )
    return np.frombuffer(raw, dtype=np.uint8)  # (BUNDLED_SIZE,) read-only


# -------------------------------------------------------------------------- splits
def split(data, *, full_enwik8=False):
    """Split bytes into ``{"train", "val", "test"}``: first 90%, next 5%, last 5%.

    Sizes are ``n_train = n * 90 // 100``, ``n_val = n * 5 // 100`` and the rest
    for test (for the 1 MiB prefix: 943,718 / 52,428 / 52,430). With
    ``full_enwik8=True`` the data must be exactly the 100,000,000 bytes of
    enwik8 and the split is exactly 90,000,000 / 5,000,000 / 5,000,000. The
    returned arrays are views of ``data``, not copies.
    """
    _check_bytes_array("data", data)
    n = data.shape[0]
    if full_enwik8:
        if n != ENWIK8_SIZE:
            raise ValueError(f"full_enwik8=True needs exactly {ENWIK8_SIZE:,} bytes, got {n:,}")
        n_train, n_val, _ = ENWIK8_SPLIT
    else:
        if n < MIN_DATA_BYTES:
            raise ValueError(
                f"data has {n} bytes; at least {MIN_DATA_BYTES} are needed so that the "
                "5% validation and test splits hold one input and one target each"
            )
        n_train = n * 90 // 100
        n_val = n * 5 // 100
    return {
        "train": data[:n_train],  # (n_train,)
        "val": data[n_train : n_train + n_val],  # (n_val,)
        "test": data[n_train + n_val :],  # (n - n_train - n_val,)
    }


# ------------------------------------------------------------------------- download
def cache_dir():
    """Where the full enwik8 lives: ``$MINISYNTH_DATA`` if set, else the user cache dir.

    The user cache dir is ``$XDG_CACHE_HOME/minisynth`` if ``XDG_CACHE_HOME`` is
    set to an absolute path, else ``~/.cache/minisynth``. The directory is not created.
    """
    env = os.environ.get("MINISYNTH_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "minisynth"
    return Path.home() / ".cache" / "minisynth"


def _download(url, fileobj, timeout, progress):
    """Stream ``url`` into ``fileobj``; return the SHA-256 hex digest of the bytes."""
    h = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length is not None and length.isdigit() else None
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=os.path.basename(url) or "download",
                disable=not progress,
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    fileobj.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as err:
        if isinstance(err, urllib.error.HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        elif isinstance(err, urllib.error.URLError):
            reason = err.reason
        else:
            reason = err
        raise DownloadError(
            f"download of {url} failed after {received:,} bytes: {reason or type(err).__name__}; "
            "nothing was saved; check the URL and the network connection and run again"
        ) from err
    if expected is not None and received != expected:
        raise DownloadError(
            f"download of {url} was interrupted: received {received:,} of {expected:,} bytes; "
            "nothing was saved, run again"
        )
    return h.hexdigest()


def _extract_member(zip_path, member, fileobj):
    """Copy ``member`` of the zip at ``zip_path`` into ``fileobj``; return its SHA-256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            if member not in names:
                raise DataError(
                    f"the downloaded zip has no member {member!r} (members: {names[:10]})"
                )
            with zf.open(member) as src:
                while chunk := src.read(_CHUNK):
                    fileobj.write(chunk)
                    h.update(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise DataError(f"the downloaded file is not a valid zip archive: {err}") from err
    return h.hexdigest()


def fetch_enwik8(
    url=OFFICIAL_URL,
    dest_dir=None,
    *,
    zip_sha256=ENWIK8_ZIP_SHA256,
    data_sha256=ENWIK8_SHA256,
    progress=True,
    timeout=60.0,
):
    """Download enwik8.zip, verify it, and install ``dest_dir/enwik8``; return that path.

    ``dest_dir`` defaults to :func:`cache_dir` (created if needed). Steps: stream
    ``url`` to a temporary file in ``dest_dir`` (a tqdm progress bar on stderr if
    ``progress``), check its SHA-256 against ``zip_sha256``, extract the member
    ``enwik8`` to a second temporary file, check its SHA-256 against
    ``data_sha256``, then atomically rename it to ``dest_dir/enwik8``.

    If ``dest_dir/enwik8`` already exists with the right checksum nothing is
    downloaded. An existing file with a wrong checksum (a corrupt cache entry)
    is removed and downloaded again.

    On any failure the temporaries are removed and no ``enwik8`` file is left
    behind. Raises :class:`DataError` (a ``ValueError``) for checksum or format
    problems and :class:`DownloadError` (an ``OSError``) for network errors,
    HTTP errors and interrupted transfers. ``timeout`` (seconds) bounds each
    blocking network operation.
    """
    if not isinstance(url, str) or not url:
        raise TypeError(f"url must be a non-empty string, got {url!r}")
    zip_sha256 = _check_sha256("zip_sha256", zip_sha256)
    data_sha256 = _check_sha256("data_sha256", data_sha256)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    dest = cache_dir() if dest_dir is None else Path(dest_dir).expanduser()
    target = dest / ENWIK8_MEMBER
    if target.exists() or target.is_symlink():
        if not target.is_file():
            raise DataError(f"{target} exists but is not a regular file; remove it and run again")
        if _sha256_file(target) == data_sha256:
            return target
        target.unlink()  # a corrupt or truncated earlier copy: replace it
    dest.mkdir(parents=True, exist_ok=True)

    zip_tmp = data_tmp = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=dest, prefix=".enwik8.zip.", suffix=".part", delete=False
        ) as f:
            zip_tmp = f.name
            got = _download(url, f, timeout, progress)
        if got != zip_sha256:
            raise DataError(
                f"checksum mismatch for {url}: SHA-256 {got}, expected {zip_sha256}; "
                "the download is corrupt or not the expected file, nothing was saved"
            )
        with tempfile.NamedTemporaryFile(
            dir=dest, prefix=".enwik8.", suffix=".part", delete=False
        ) as f:
            data_tmp = f.name
            got = _extract_member(zip_tmp, ENWIK8_MEMBER, f)
            f.flush()
            os.fsync(f.fileno())
        if got != data_sha256:
            raise DataError(
                f"checksum mismatch for {ENWIK8_MEMBER!r} extracted from {url}: "
                f"SHA-256 {got}, expected {data_sha256}; nothing was saved"
            )
        os.replace(data_tmp, target)
        data_tmp = None
    finally:  # also on KeyboardInterrupt
        _unlink_quietly(zip_tmp)
        _unlink_quietly(data_tmp)
    return target


# ---------------------------------------------------------------------------- loading
def _describe(what, n, splits):
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in splits.items())
    return f"{what} ({n:,} bytes; split 90/5/5: {sizes})"


def load_data(spec):
    """Load a byte data set by name or path; return ``(splits, description)``.

    ``spec`` is ``"bundled"`` (the packaged 1 MiB prefix of enwik8),
    ``"enwik8"`` (the full file fetched by ``minisynth data fetch`` into
    :func:`cache_dir`; its size is checked, its checksum was checked when it
    was fetched) or a path to a local file read as raw bytes (write
    ``./bundled`` to mean a file of that name). ``splits`` is the dict returned
    by :func:`split`; ``description`` is a one-line summary for logs.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a string or path, got {type(spec).__name__}")
    if not spec:
        raise ValueError("data spec is empty; use 'bundled', 'enwik8' or a file path")
    if spec == "bundled":
        data = load_bundled()  # (BUNDLED_SIZE,)
        splits = split(data)
        return splits, _describe("bundled enwik8 prefix", data.shape[0], splits)
    if spec == "enwik8":
        path = cache_dir() / ENWIK8_MEMBER
        if not path.is_file():
            raise FileNotFoundError(
                f"the full enwik8 is not downloaded (looked for {path}); run "
                "`minisynth data fetch` first (or set MINISYNTH_DATA to the folder holding it), "
                "or use the bundled prefix ('bundled')"
            )
        size = path.stat().st_size
        if size != ENWIK8_SIZE:
            raise DataError(
                f"{path} has {size:,} bytes but enwik8 has {ENWIK8_SIZE:,}; "
                "delete it and run `minisynth data fetch` again"
            )
        data = np.fromfile(path, dtype=np.uint8)  # (ENWIK8_SIZE,)
        splits = split(data, full_enwik8=True)
        return splits, _describe(f"enwik8 from {path}", data.shape[0], splits)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data file {spec!r} not found (use 'bundled', 'enwik8' or a path to a file)"
        )
    if path.is_dir():
        raise IsADirectoryError(f"data path {spec!r} is a directory, expected a file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"data file {spec!r} is empty")
    if size < MIN_DATA_BYTES:
        raise DataError(
            f"data file {spec!r} has {size} bytes; at least {MIN_DATA_BYTES} are needed "
            "for a 90/5/5 train/val/test split"
        )
    data = np.fromfile(path, dtype=np.uint8)  # (n,)
    splits = split(data)
    return splits, _describe(f"file {path}", data.shape[0], splits)


def canonical_data_spec(spec):
    """``spec`` as a run saves it: ``bundled`` and ``enwik8`` as they are, a file path
    made absolute (so that the run can be resumed from any working directory)."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if spec in ("bundled", "enwik8") or not isinstance(spec, str) or not spec:
        return spec  # load_data names any problem
    return str(Path(spec).expanduser().resolve())


def data_fingerprint(spec, splits):
    """What a run trains on: ``{"spec", "size", "sha256"}`` of the bytes behind ``splits``
    (which cover the data in order, so this is the SHA-256 of the whole file)."""
    digest = hashlib.sha256()
    for part in splits.values():
        digest.update(part)
    return {
        "spec": canonical_data_spec(spec),
        "size": int(sum(part.size for part in splits.values())),
        "sha256": digest.hexdigest(),
    }


# ---------------------------------------------------------------------------- batches
def _check_window(data, block_size):
    n = data.shape[0]
    if n < block_size + 1:
        raise ValueError(
            f"the data split has {n:,} bytes but block_size={block_size} needs at least "
            f"block_size + 1 = {block_size + 1:,} (inputs plus the shifted targets); this is "
            f"more than the data can fill: use block_size <= {max(n - 1, 0):,} or more data"
        )


def get_batch(data, batch_size, block_size, rng):
    """Random training windows: ``x`` (B, T) int64 and ``y = x`` shifted by one byte.

    Each row starts at an offset drawn uniformly from ``[0, n - T)`` with ``rng``
    (a ``numpy.random.Generator``), so ``x[b] = data[s : s + T]`` and
    ``y[b] = data[s + 1 : s + T + 1]``. Needs ``n >= T + 1``.
    """
    _check_bytes_array("data", data)
    B = check_positive_int("batch_size", batch_size)
    T = check_positive_int("block_size", block_size)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    _check_window(data, T)
    starts = rng.integers(0, data.shape[0] - T, size=B)  # (B,)
    windows = np.lib.stride_tricks.sliding_window_view(data, T + 1)  # (n - T, T + 1) view
    w = windows[starts].astype(np.int64)  # (B, T + 1)
    x = w[:, :-1]  # (B, T)
    y = w[:, 1:]  # (B, T)
    return x, y


def iter_eval_windows(data, block_size, batch_size):
    """Walk a split in order in non-overlapping windows; yield ``(x, y)`` int64 batches.

    Window ``k`` is ``x = data[k*T : k*T + T]``, ``y = data[k*T + 1 : k*T + T + 1]``,
    for ``k = 0 .. W - 1`` with ``W = (n - 1) // T``; batches hold ``batch_size``
    consecutive windows, the last batch possibly fewer (shape (B', T), B' <= B).
    The targets covered are exactly ``data[1 : 1 + W*T]``, each once. The first
    byte is never a target, and the final ``(n - 1) % T`` targets (less than one
    window) are dropped, so every window has the full length T. Each window starts
    with no earlier context, as in the usual non-overlapping BPC evaluation.
    Inputs are checked when called (not at the first ``next``).
    """
    _check_bytes_array("data", data)
    T = check_positive_int("block_size", block_size)
    B = check_positive_int("batch_size", batch_size)
    _check_window(data, T)
    W = (data.shape[0] - 1) // T

    def batches():
        for k0 in range(0, W, B):
            k1 = min(k0 + B, W)
            x = data[k0 * T : k1 * T].reshape(k1 - k0, T).astype(np.int64)  # (B', T)
            y = data[k0 * T + 1 : k1 * T + 1].reshape(k1 - k0, T).astype(np.int64)  # (B', T)
            yield x, y

    return batches()


# ------------------------------------------------------------------ text and bytes
def encode_text(text):
    """UTF-8 bytes of ``text`` as an int64 array (the model is byte-level); never empty."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    # surrogateescape keeps undecodable command-line bytes as the bytes they were
    tokens = np.frombuffer(text.encode("utf-8", errors="surrogateescape"), dtype=np.uint8)
    if tokens.size == 0:
        raise ValueError("the input text is empty; give at least one character")
    return tokens.astype(np.int64)


def decode(tokens):
    """Bytes -> text, replacing invalid UTF-8 (a byte model may emit broken sequences)."""
    return bytes(np.asarray(tokens, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")
