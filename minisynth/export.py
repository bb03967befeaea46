"""Export and import: a model as ``model.safetensors`` + ``config.json``, for PyTorch and back.

The directory format (read and written without torch)::

    DIR/model.safetensors   every parameter and buffer under its contract name
                            (``wte``, ``blocks.0.attn.dense.W2``, ...), float32
    DIR/config.json         the ModelConfig fields, plus "format": "minisynth" and
                            "format_version": 1

``minisynth export`` writes it from a checkpoint; the PyTorch twin
(:mod:`minisynth.torch_model`) loads it with ``SynthesizerTorch.from_pretrained(DIR)``
and writes it with ``save_pretrained(DIR)``; ``minisynth import`` turns it back into a
checkpoint. ``safetensors.numpy.load_file`` reads the weights without torch.

The safetensors file format (https://github.com/huggingface/safetensors) is simple
enough to write here, which keeps it out of minisynth's dependencies: an 8-byte
little-endian header length, a JSON header mapping each name to its dtype, shape and
byte range, padded with spaces to a multiple of 8 bytes, then the raw little-endian
tensor bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np

from .checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
)
from .model import ModelConfig, SynthesizerLM, check_model_size, parameter_shapes
from .run_folder import temporary_name

BYTE_VOCAB = 256  # minisynth is byte-level

FORMAT_NAME = "minisynth"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
SAFETENSORS_HEADER_MAX = 100_000_000  # bytes: the format's own limit
CONFIG_MAX_BYTES = 1 << 20  # a config.json is a few hundred bytes
EXPORT_DTYPE = "F32"


class ExportError(CheckpointError):
    """An export directory that is missing, malformed, or does not fit its own config."""


# ------------------------------------------------------------------- safetensors
def save_safetensors(path, arrays):
    """Write ``arrays`` (name -> float32 ndarray) as a safetensors file, atomically."""
    header, offset = {}, 0
    for name, arr in arrays.items():
        nbytes = arr.size * 4
        header[name] = {"dtype": EXPORT_DTYPE, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + nbytes]}  # fmt: skip
        offset += nbytes
    header["__metadata__"] = {"format": FORMAT_NAME}
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes

    def write(f):
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for arr in arrays.values():
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())

    atomic_write(Path(path), write)


def _entry_error(path, name, what):
    return ExportError(f"{path}: tensor {name!r} {what}")


def _no_duplicates(pairs):
    """json object hook: a safetensors header names each tensor (and each field) once."""
    names = [name for name, _ in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"the header names {repeated} more than once")
    return dict(pairs)


def _natural(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors_header(path):
    """The checked header of a safetensors file: ``(entries, data_start)`` with entries
    name -> (dtype name, shape, (begin, end)), without reading any tensor.

    As strict as the format: an 8-byte length of at most 100 MB, a JSON object of
    tensors (and an optional string-to-string ``__metadata__``), each named once with
    exactly ``dtype``, ``shape`` and ``data_offsets``; the byte ranges tile the data
    exactly (no gap, no overlap, no trailing byte) and each fits its shape.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist")
    if not path.is_file():
        raise ExportError(f"{path} is not a regular file")
    size = path.stat().st_size
    with path.open("rb") as f:
        first = f.read(8)
        if len(first) < 8:
            raise ExportError(f"{path} is not a safetensors file (shorter than its 8-byte header)")
        (head_len,) = struct.unpack("<Q", first)
        if head_len > SAFETENSORS_HEADER_MAX:
            raise ExportError(
                f"{path}: the header claims {head_len:,} bytes, over the format's limit of "
                f"{SAFETENSORS_HEADER_MAX:,}"
            )
        if 8 + head_len > size:
            raise ExportError(
                f"{path} is truncated or not a safetensors file (its header runs past its end)"
            )
        text = f.read(head_len)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ExportError(f"{path}: the safetensors header is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise ExportError(f"{path} has an unreadable safetensors header: {err}") from None
    if not isinstance(header, dict):
        raise ExportError(
            f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object "
            "of tensors"
        )
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):  # (JSON keys are always strings)
        raise ExportError(f"{path}: __metadata__ must map strings to strings")
    entries = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _entry_error(path, name, "must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise _entry_error(path, name, f"has the dtype {dtype!r}, not a name")
        if not isinstance(shape, list) or not all(_natural(d) for d in shape):
            raise _entry_error(path, name, f"has the shape {shape!r}, not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))
                and offsets[0] <= offsets[1]):  # fmt: skip
            raise _entry_error(path, name, f"has the byte range {offsets!r}, not [begin, end]")
        entries[name] = (dtype, tuple(shape), tuple(offsets))
    data_len, position = size - 8 - head_len, 0
    for name, (dtype, shape, (begin, end)) in sorted(entries.items(), key=lambda e: e[1][2]):
        if begin != position:
            raise _entry_error(
                path, name, f"starts at data byte {begin}, expected {position} (the byte ranges "
                "must follow each other without gaps or overlaps)"
            )  # fmt: skip
        nbytes = (
            math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
            if dtype in SAFETENSORS_DTYPES
            else None
        )
        if nbytes is not None and end - begin != nbytes:
            raise _entry_error(path, name, f"has a byte range that does not fit its shape {shape}")
        position = end
    if position != data_len:
        raise ExportError(
            f"{path}: the tensors cover {position:,} bytes of data but the file holds "
            f"{data_len:,} (truncated, or trailing bytes)"
        )
    return entries, 8 + head_len


def load_safetensors(path):
    """Read a safetensors file -> (name -> ndarray, dtype name per tensor); clear errors.
    Tensors of a dtype minisynth does not read are left out of the arrays."""
    entries, data_start = read_safetensors_header(path)
    arrays = {}
    with Path(path).open("rb") as f:
        for name, (dtype_name, shape, (begin, end)) in entries.items():
            if dtype_name in SAFETENSORS_DTYPES:  # the caller reports the others
                f.seek(data_start + begin)
                raw = f.read(end - begin)
                dtype = SAFETENSORS_DTYPES[dtype_name]
                arrays[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return arrays, {name: entry[0] for name, entry in entries.items()}


# ----------------------------------------------------------------- directories
def write_pretrained(out_dir, config, arrays):
    """Write ``DIR/model.safetensors`` (float32) and ``DIR/config.json``: both or neither.

    A new DIR is written as a temporary folder and renamed into place. Into an existing
    DIR both files are written as temporaries first and only then renamed over the old
    ones, so a failure while writing (a full disk) leaves the old pair as it was.
    """
    out_dir = Path(out_dir)
    fields = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **dataclasses.asdict(config)}
    text = (json.dumps(fields, indent=2, sort_keys=True) + "\n").encode("utf-8")
    weights = {n: np.asarray(a, np.float32) for n, a in arrays.items()}
    fresh = not out_dir.exists()
    folder = temporary_name(out_dir) if fresh else out_dir
    folder.mkdir(parents=True, exist_ok=not fresh)
    # into a new (temporary) folder the files go under their names; into an existing
    # folder as temporaries, renamed over the old pair once both are written
    staged = {
        name: folder / name if fresh else temporary_name(out_dir / name)
        for name in (WEIGHTS_NAME, CONFIG_NAME)
    }
    try:
        save_safetensors(staged[WEIGHTS_NAME], weights)
        atomic_write(staged[CONFIG_NAME], lambda f: f.write(text))
        if fresh:
            folder.rename(out_dir)
        else:
            for name, tmp in staged.items():
                tmp.replace(out_dir / name)
    except BaseException:
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)  # our own temporary folder only
        else:
            for tmp in staged.values():
                tmp.unlink(missing_ok=True)
        raise


def read_config(src_dir):
    """The ModelConfig of an export directory, with errors naming the problem."""
    path = Path(src_dir) / CONFIG_NAME
    if not Path(src_dir).is_dir():
        raise ExportError(
            f"{src_dir} is not a directory (expected {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    try:
        if path.exists() and not path.is_file():
            raise ExportError(f"{path} is not a regular file")
        if path.is_file() and path.stat().st_size > CONFIG_MAX_BYTES:
            raise ExportError(f"{path} is {path.stat().st_size:,} bytes, not a config.json")
        fields = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist") from None
    except RecursionError:
        raise ExportError(f"{path} is nested too deeply to be a config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(fields, dict):
        raise ExportError(f"{path} must hold a JSON object")
    version = fields.pop("format_version", None)
    fields.pop("format", None)
    if version != FORMAT_VERSION:
        raise ExportError(
            f"{path} has format_version {version!r}; this minisynth reads version {FORMAT_VERSION}"
        )
    try:
        return ModelConfig.from_json(json.dumps(fields))
    except (TypeError, ValueError) as err:
        raise ExportError(f"{path}: {err}") from None


def read_pretrained(src_dir, dtype=np.float32, *, allow_nonfinite=False):
    """An export directory -> a :class:`SynthesizerLM`, every array checked against the config.

    The config and the weights' header are checked against each other before any tensor
    is read or the model built; weights holding NaN or infinities are refused unless
    ``allow_nonfinite``.
    """
    src_dir = Path(src_dir)
    config = read_config(src_dir)
    if config.vocab_size != BYTE_VOCAB:
        raise ExportError(
            f"{src_dir / CONFIG_NAME} has vocab_size {config.vocab_size}; minisynth models "
            f"read bytes, so it must be {BYTE_VOCAB}"
        )
    try:
        check_model_size(config, dtype)
    except ValueError as err:
        raise ExportError(f"{src_dir / CONFIG_NAME}: {err}") from None
    weights = src_dir / WEIGHTS_NAME
    entries, _ = read_safetensors_header(weights)
    params, buffers = parameter_shapes(config)
    expected = {**params, **buffers}
    missing = [n for n in expected if n not in entries]
    unexpected = [n for n in entries if n not in expected]
    if missing or unexpected:
        raise ExportError(
            f"{weights} does not match {CONFIG_NAME} "
            f"(attention {config.attention!r}, {config.n_layers} layers): "
            + "; ".join(
                f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}"
                for what, names in (("missing", missing), ("unexpected", unexpected))
                if names
            )
        )
    for name, shape in expected.items():
        dtype_name, saved_shape, _ = entries[name]
        if dtype_name != EXPORT_DTYPE:
            raise ExportError(
                f"{weights}: tensor {name} has dtype {dtype_name}, expected {EXPORT_DTYPE} "
                "(float32; in PyTorch, call model.float() before saving)"
            )
        if saved_shape != shape:
            raise ExportError(
                f"{weights}: tensor {name} has shape {saved_shape}, but {CONFIG_NAME} implies "
                f"{shape}"
            )
    arrays, _ = load_safetensors(weights)
    if not allow_nonfinite:
        for name, arr in arrays.items():
            if not np.isfinite(arr).all():
                raise ExportError(
                    f"{weights}: tensor {name} holds NaN or infinite values; a model with "
                    "them predicts nothing (minisynth import --allow-nonfinite takes it anyway)"
                )
    model = SynthesizerLM(config, dtype=dtype)
    model.load_state({n: arrays[n] for n in model.params}, {n: arrays[n] for n in model.buffers})
    return model


def _refuse_overwrite(path, what, force):
    if path.exists() and not force:
        raise ExportError(f"{path} already exists; pass --force to replace the {what}")


def export_checkpoint(checkpoint, out_dir, *, force=False):
    """Checkpoint (or run directory) -> export directory; returns the weights' path."""
    out_dir = Path(out_dir)
    _refuse_overwrite(out_dir / WEIGHTS_NAME, "exported model", force)
    model, _ = load_checkpoint(checkpoint)
    write_pretrained(out_dir, model.config, {**model.params, **model.buffers})
    return out_dir / WEIGHTS_NAME


def import_pretrained(src_dir, run_dir, *, force=False, allow_nonfinite=False):
    """Export directory -> ``run_dir/checkpoint.npz`` (for eval, sample, plot, compare,
    and ``train --resume`` with the data you name)."""
    run_dir = Path(run_dir)
    _refuse_overwrite(run_dir / CHECKPOINT_NAME, "checkpoint", force)
    model = read_pretrained(src_dir, allow_nonfinite=allow_nonfinite)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT_NAME
    save_checkpoint(path, model, train_config={"imported_from": str(Path(src_dir).resolve())})
    return path
