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
import os
import secrets
import zipfile
from pathlib import Path

import numpy as np

from .model import ModelConfig, SynthesizerLM

FORMAT_VERSION = 1
OPTIM_PREFIX = "optim."
CHECKPOINT_NAME = "checkpoint.npz"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, not an npz, or does not fit the model."""


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temporary file, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
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


def read_checkpoint(path):
    """Read a checkpoint file (or a run directory's) into a dict of arrays, with clear
    errors for bad files."""
    path = checkpoint_path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} is not a readable .npz archive (truncated or corrupt?): {err}"
        ) from None
    for key in ("config", "step"):
        if key not in data:
            raise CheckpointError(f"checkpoint {path} has no '{key}' entry: not a minisynth file")
    return data


def load_checkpoint(path, *, dtype=np.float32, backend="numpy"):
    """(model, checkpoint dict) from a checkpoint file or a run directory; raises
    CheckpointError naming any problem. ``backend``: the model's (see
    :mod:`minisynth.backend`)."""
    path = checkpoint_path(path)
    data = read_checkpoint(path)
    try:
        config = ModelConfig.from_json(str(data["config"]))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {err}") from None
    model = SynthesizerLM(config, dtype=dtype, backend=backend)
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


def restore_rng(data):
    """A numpy Generator in the state saved in the checkpoint."""
    rng = np.random.default_rng()
    state = saved_json(data, "rng_state")
    if not state:
        raise CheckpointError("the checkpoint holds no RNG state, so it cannot be resumed")
    rng.bit_generator.state = state
    return rng
