"""Checkpoints: one ``.npz`` per run, written atomically.

Layout of the archive (all keys are plain strings):

* every parameter and buffer under its contract name (``wte``, ``blocks.0.attn.R``, ...);
* ``config``: the :class:`~minisynth.model.ModelConfig` as a JSON string;
* ``train_config``: the training settings as a JSON string (may be ``{}``);
* ``optim.t``, ``optim.m.<name>``, ``optim.v.<name>``: the AdamW state;
* ``step``: the number of completed optimisation steps;
* ``rng_state``: the data-sampling generator's state as a JSON string;
* ``format``: the checkpoint format version.

* ``data``: what the run trained on, as a JSON string (``spec``, ``size``,
  ``sha256``; ``{}`` in checkpoints written before it existed), so that a resumed
  run can refuse data that changed.

A checkpoint is written to a temporary file in the same directory, flushed to
disk, then renamed over the old one, so a crash or kill at any moment leaves
either the previous complete checkpoint or the new complete one. The file gets
the permissions the user's umask gives a new file, like any file ``open`` creates.

Wherever a checkpoint is read, a run directory (the ``--out`` of ``minisynth
train``) stands for the ``checkpoint.npz`` inside it.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from .model import ModelConfig, SynthesizerLM, check_model_size, parameter_shapes
from .run_folder import temporary_name

FORMAT_VERSION = 1
OPTIM_PREFIX = "optim."
CHECKPOINT_NAME = "checkpoint.npz"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, not an npz, or does not fit the model."""


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temporary file, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)  # a name only minisynth makes (run_folder sweeps them)
    # os.open with mode 0o666 lets the kernel apply the umask (mkstemp would force 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_checkpoint(path, model, *, optimizer=None, step=0, rng=None, train_config=None, data=None):
    """Write the model (and optionally optimizer, step, RNG state, training settings
    and the data's fingerprint) to ``path`` atomically."""
    arrays = {**model.params, **model.buffers}
    arrays["config"] = np.array(model.config.to_json())
    arrays["train_config"] = np.array(json.dumps(train_config or {}, sort_keys=True))
    arrays["data"] = np.array(json.dumps(data or {}, sort_keys=True))
    arrays["step"] = np.array(int(step), dtype=np.int64)
    state = rng.bit_generator.state if rng is not None else {}
    arrays["rng_state"] = np.array(json.dumps(state))
    arrays["format"] = np.array(FORMAT_VERSION, dtype=np.int64)
    if optimizer is not None:
        arrays.update({OPTIM_PREFIX + k: v for k, v in optimizer.state_dict().items()})
    atomic_write(path, lambda f: np.savez(f, **arrays))


def checkpoint_path(path):
    """``path`` itself, or ``path/checkpoint.npz`` when ``path`` is a run directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise CheckpointError(
                f"checkpoint {path} is a directory with no {CHECKPOINT_NAME} in it "
                "(give a run directory written by `minisynth train`, or a .npz file)"
            )
        return path / CHECKPOINT_NAME
    return path


# The entries besides the arrays: small JSON strings and scalars.
META_KEYS = ("config", "train_config", "data", "step", "rng_state", "format", OPTIM_PREFIX + "t")
META_MAX_BYTES = 1 << 20  # a JSON string or a scalar, with its .npy header
NPY_HEADER_MAX_BYTES = 4096  # np.save's header is a few hundred bytes at most


def regular_file(path, what):
    """``path`` if it is a regular file (not a folder, device or pipe), else a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a regular file")
    return path


def _expected_sizes(path, read_meta):
    """Entry -> the most bytes it may hold: its model arrays (and their AdamW moments) as
    the saved config implies, at 8 bytes a number; the metadata entries."""
    try:
        config = ModelConfig.from_json(read_meta("config"))
        check_model_size(config, np.float64)  # before any array of it is read
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {err}") from None
    params, buffers = parameter_shapes(config)
    arrays = {n: 8 * math.prod(shape) for n, shape in {**params, **buffers}.items()}
    moments = {f"{OPTIM_PREFIX}{m}.{n}": arrays[n] for n in params for m in ("m", "v")}
    limits = {**arrays, **moments, **dict.fromkeys(META_KEYS, META_MAX_BYTES)}
    return {name: size + NPY_HEADER_MAX_BYTES for name, size in limits.items()}


def read_checkpoint(path):
    """Read a checkpoint file (or a run directory's) into a dict of arrays, with clear
    errors for bad files.

    Only the entries a checkpoint of its saved config holds are read, and each only
    after its declared size is checked against what the config implies (and, for the
    model's size, against :func:`~minisynth.model.memory_limit`), so a small file
    cannot make this allocate more than its model needs.
    """
    path = regular_file(checkpoint_path(path), "checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is not a readable .npz archive (truncated, or not a "
            "minisynth checkpoint)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in ("config", "step"):
                if key not in npz.files:
                    raise CheckpointError(
                        f"checkpoint {path} has no '{key}' entry: not a minisynth file"
                    )
            declared = {name: npz.zip.getinfo(name + ".npy").file_size for name in npz.files}

            def read(name, limit):
                if declared[name] > limit:
                    raise CheckpointError(
                        f"checkpoint {path}: entry {name!r} declares {declared[name]:,} bytes, "
                        f"more than its config allows ({limit:,})"
                    )
                return npz[name]

            expected = _expected_sizes(path, lambda n: str(read(n, META_MAX_BYTES)))
            return {n: read(n, expected[n]) for n in npz.files if n in expected}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"checkpoint {path} is not a readable .npz archive (truncated or corrupt?): {err}"
        ) from None


def load_checkpoint(path, *, dtype=np.float32, backend="numpy", tiles=None):
    """(model, checkpoint dict) from a checkpoint file or a run directory; raises
    CheckpointError naming any problem. ``backend``: the model's (see
    :mod:`minisynth.backend`)."""
    path = checkpoint_path(path)
    data = read_checkpoint(path)
    try:
        config = ModelConfig.from_json(str(data["config"]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {err}") from None
    model = SynthesizerLM(config, dtype=dtype, backend=backend, tiles=tiles)
    params = {k: data[k] for k in model.params if k in data}
    buffers = {k: data[k] for k in model.buffers if k in data}
    missing = [k for k in list(model.params) + list(model.buffers) if k not in data]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is missing {len(missing)} array(s) its config needs, "
            f"e.g. {missing[:3]} (saved from a different model?)"
        )
    try:
        model.load_state(params, buffers)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path} does not fit its own config: {err}") from None
    return model, data


def optimizer_state(data):
    """The ``optim.*`` entries of a checkpoint dict, without the prefix."""
    n = len(OPTIM_PREFIX)
    return {k[n:]: v for k, v in data.items() if k.startswith(OPTIM_PREFIX)}


def saved_json(data, key):
    """A JSON entry of a checkpoint dict (``{}`` when an older checkpoint lacks it)."""
    return json.loads(str(data.get(key, np.array("{}"))))


def restore_rng(data, path="the checkpoint"):
    """A numpy Generator in the state saved in the checkpoint (``path``, for messages)."""
    rng = np.random.default_rng()
    state = saved_json(data, "rng_state")
    if not state:
        raise CheckpointError(f"{path} holds no RNG state, so it cannot be resumed")
    try:
        rng.bit_generator.state = state
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(
            f"{path}: its entry rng_state is not a data RNG state ({err})"
        ) from None
    return rng
