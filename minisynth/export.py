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
from .model import ModelConfig, SynthesizerLM

FORMAT_NAME = "minisynth"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
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


def load_safetensors(path):
    """Read a safetensors file -> (name -> ndarray, dtype name per tensor); clear errors."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist") from None
    except OSError as err:
        raise ExportError(f"{path} cannot be read: {err}") from None
    if len(raw) < 8:
        raise ExportError(f"{path} is not a safetensors file (shorter than its 8-byte header)")
    (head_len,) = struct.unpack("<Q", raw[:8])
    if 8 + head_len > len(raw):
        raise ExportError(f"{path} is truncated or not a safetensors file (header past the end)")
    try:
        header = json.loads(raw[8 : 8 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path} has an unreadable safetensors header: {err}") from None
    data = memoryview(raw)[8 + head_len :]
    arrays, dtypes = {}, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ExportError(f"{path}: tensor {name} has a malformed header entry") from None
        dtypes[name] = dtype_name
        if dtype_name not in SAFETENSORS_DTYPES:
            continue  # reported by the caller, which knows what it expected
        dtype = SAFETENSORS_DTYPES[dtype_name]
        if not (0 <= begin <= end <= len(data)) or end - begin != math.prod(shape) * dtype.itemsize:
            raise ExportError(f"{path}: tensor {name}'s byte range does not fit its shape {shape}")
        arrays[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape).copy()
    return arrays, dtypes


# ----------------------------------------------------------------- directories
def write_pretrained(out_dir, config, arrays):
    """Write ``DIR/model.safetensors`` (float32) and ``DIR/config.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(
        out_dir / WEIGHTS_NAME, {n: np.asarray(a, np.float32) for n, a in arrays.items()}
    )
    fields = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **dataclasses.asdict(config)}
    text = json.dumps(fields, indent=2, sort_keys=True) + "\n"
    atomic_write(out_dir / CONFIG_NAME, lambda f: f.write(text.encode("utf-8")))


def read_config(src_dir):
    """The ModelConfig of an export directory, with errors naming the problem."""
    path = Path(src_dir) / CONFIG_NAME
    if not Path(src_dir).is_dir():
        raise ExportError(
            f"{src_dir} is not a directory (expected {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist") from None
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


def read_pretrained(src_dir, dtype=np.float32):
    """An export directory -> a :class:`SynthesizerLM`, every array checked against the config."""
    src_dir = Path(src_dir)
    config = read_config(src_dir)
    arrays, dtypes = load_safetensors(src_dir / WEIGHTS_NAME)
    model = SynthesizerLM(config, dtype=dtype)
    expected = {**model.params, **model.buffers}
    missing = [n for n in expected if n not in dtypes]
    unexpected = [n for n in dtypes if n not in expected]
    if missing or unexpected:
        raise ExportError(
            f"{src_dir / WEIGHTS_NAME} does not match {CONFIG_NAME} "
            f"(attention {config.attention!r}, {config.n_layers} layers): "
            + "; ".join(
                f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}"
                for what, names in (("missing", missing), ("unexpected", unexpected))
                if names
            )
        )
    for name, arr in expected.items():
        if dtypes[name] != EXPORT_DTYPE:
            raise ExportError(
                f"tensor {name} has dtype {dtypes[name]}, expected {EXPORT_DTYPE} (float32; "
                "in PyTorch, call model.float() before saving)"
            )
        if arrays[name].shape != arr.shape:
            raise ExportError(
                f"tensor {name} has shape {arrays[name].shape}, but {CONFIG_NAME} "
                f"implies {arr.shape}"
            )
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


def import_pretrained(src_dir, run_dir, *, force=False):
    """Export directory -> ``run_dir/checkpoint.npz`` (for eval, sample, plot, compare)."""
    run_dir = Path(run_dir)
    _refuse_overwrite(run_dir / CHECKPOINT_NAME, "checkpoint", force)
    model = read_pretrained(src_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT_NAME
    save_checkpoint(path, model, train_config={"imported_from": str(Path(src_dir).resolve())})
    return path
