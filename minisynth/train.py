"""Training, evaluation and sampling for :class:`~minisynth.model.SynthesizerLM`.

The loop: random windows of T bytes from the train split, AdamW with global-norm
clipping and a warmup + cosine learning-rate schedule, periodic validation BPC
over the whole validation split in non-overlapping windows, an atomic
checkpoint after every evaluation and at the end, ``metrics.jsonl`` with one
JSON object per logged step.

Resuming restores parameters, optimizer state, step and the data RNG, so an
interrupted-and-resumed run reproduces the uninterrupted run's losses exactly.
A resumed run is the checkpoint's run: its model, data and schedule come from the
checkpoint; only the total number of steps may change. Settings that differ from
the saved ones, and data that changed since the run started, are refused
(:class:`RunConflict`), and so is a fresh run into a directory that already holds
a run, unless ``force=True``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm  # a widget in notebooks, a text bar in terminals

from . import checkpoint as ckpt
from . import fast
from .attention import check_tiles, takes_tiles
from .backend import check_backend
from .data import (
    canonical_data_spec,
    data_fingerprint,
    decode,
    get_batch,
    iter_eval_windows,
    load_data,
)
from .model import (
    MAX_BYTES_VARIABLE,
    ModelConfig,
    SynthesizerLM,
    check_model_size,
    gib,
    memory_limit,
)
from .optim import AdamW, clip_grad_norm, lr_schedule, synthetic_logits_lr_scale
from .run_folder import RunLock, metrics_lines, sweep_temporaries

LN2 = math.log(2.0)
CHECKPOINT_NAME = ckpt.CHECKPOINT_NAME
METRICS_NAME = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Optimisation settings (the model's shape lives in ModelConfig)."""

    data: str = "bundled"
    batch_size: int = 32
    steps: int = 1500
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    synthetic_lr_scale: float = 1.0  # multiplies the learning rate of R, R1, R2
    eval_interval: int = 250
    log_interval: int = 10
    seed: int = 0
    sample_length: int = 200

    def __post_init__(self):
        for name in ("batch_size", "steps", "eval_interval", "log_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps!r}"
            )
        if not (isinstance(self.synthetic_lr_scale, (int, float)) and self.synthetic_lr_scale > 0
                and math.isfinite(self.synthetic_lr_scale)):  # fmt: skip
            raise ValueError(
                f"synthetic_lr_scale must be a positive number, got {self.synthetic_lr_scale!r}"
            )
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr} must not exceed lr {self.lr}")
        if self.sample_length < 0:
            raise ValueError(f"sample_length must be non-negative, got {self.sample_length}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class RunConflict(ValueError):
    """A run directory whose saved run does not match the request (overwrite or resume).

    ``differences`` lists ``(field, saved value, requested value)`` when a resumed
    run's settings differ from the saved ones (the CLI names them as flags).
    """

    def __init__(self, message, differences=()):
        super().__init__(message)
        self.differences = list(differences)


def saved_run(out_dir):
    """``(ModelConfig, TrainConfig or None, data fingerprint dict)`` of the run in ``out_dir``.

    The TrainConfig is None (and the fingerprint ``{}``) for checkpoints written
    before training settings were saved.
    """
    return _saved_settings(ckpt.read_checkpoint(Path(out_dir) / CHECKPOINT_NAME))


def _saved_settings(data):
    """(ModelConfig, TrainConfig or None, data fingerprint or {}) of a checkpoint dict. A
    checkpoint without training settings (written by ``minisynth import``, or before they
    were saved) gives None and {}: it resumes with the settings and data given now."""
    model_config = ModelConfig.from_json(str(data["config"]))
    saved = ckpt.saved_json(data, "train_config")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(saved, dict) or not saved or not fields.issuperset(saved):
        return model_config, None, {}
    try:
        saved["data"] = canonical_data_spec(saved.get("data", TrainConfig.data))
        train_config = TrainConfig(**saved)  # older runs saved the data spec as typed
    except (TypeError, ValueError) as err:
        raise ckpt.CheckpointError(
            f"the checkpoint's training settings are invalid: {err}"
        ) from None
    fingerprint = ckpt.saved_json(data, "data")
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("sha256"), str):
        fingerprint = {}  # nothing to compare the data with: it is recorded from now on
    return model_config, train_config, fingerprint


def resumed_settings(out_dir, overrides):
    """(ModelConfig, TrainConfig) of the run saved in ``out_dir``, with ``overrides``
    (field -> value, e.g. the flags typed on the command line) on top: the one place
    where saved and given settings merge. A new ``steps`` stretches or cuts the
    schedule (:func:`resumed_schedule`)."""
    saved_model, saved_train, _ = saved_run(out_dir)
    return _merged_settings(saved_model, saved_train, overrides)


def _merged_settings(saved_model, saved_train, overrides):
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model_overrides = {k: v for k, v in overrides.items() if k in model_fields}
    train_overrides = {k: v for k, v in overrides.items() if k not in model_fields}
    model_config = dataclasses.replace(saved_model, **model_overrides)
    if saved_train is None:  # imported, or older than saved settings: a new schedule
        return model_config, new_run_settings(train_overrides)
    schedule = resumed_schedule(saved_train, train_overrides.get("steps", saved_train.steps))
    return model_config, dataclasses.replace(schedule, **train_overrides)


def new_run_settings(overrides):
    """The TrainConfig of a new schedule: ``overrides`` (field -> value) on the defaults,
    where the default min_lr and warmup_steps give way to a lower given lr and steps."""
    values = {**dataclasses.asdict(TrainConfig()), **overrides}
    if "min_lr" not in overrides:
        values["min_lr"] = min(values["min_lr"], values["lr"])
    if "warmup_steps" not in overrides:
        values["warmup_steps"] = min(values["warmup_steps"], values["steps"])
    return TrainConfig(**values)


def resumed_schedule(saved, steps):
    """The saved TrainConfig stretched or cut to ``steps`` in total: the one setting a
    resumed run may change (a warmup longer than the new total is cut to it)."""
    return dataclasses.replace(saved, steps=steps, warmup_steps=min(saved.warmup_steps, steps))


def setting_differences(saved, requested):
    """``[(name, saved value, requested value)]`` for each field of two configs of one
    dataclass that differs."""
    a, b = dataclasses.asdict(saved), dataclasses.asdict(requested)
    return [(k, a[k], b[k]) for k in a if a[k] != b[k]]


def unigram_bpc(train_bytes, eval_bytes):
    """Bits per character of the unigram model of ``train_bytes`` (byte frequencies, add-one
    smoothed so that a byte unseen in training costs finite bits) on ``eval_bytes``."""
    counts = np.bincount(train_bytes, minlength=256) + 1.0  # (V,)
    log2_p = np.log2(counts / counts.sum())  # (V,)
    return float(-log2_p[eval_bytes].mean())


def evaluate(model, data, batch_size=32):
    """Bits per character over ``data`` walked in order in non-overlapping windows of max_len."""
    total, count = 0.0, 0
    for x, y in iter_eval_windows(data, model.config.max_len, batch_size):
        logits = fast.logits(model, x)  # (B,T,V)
        loss, _ = model.ops.cross_entropy_forward(logits, y)
        total += float(loss) * y.size
        count += y.size
    return total / count / LN2


def _trim_metrics(path, last_step):
    """Drop logged lines after ``last_step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = []
    for line in metrics_lines(path):
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line from a killed run
    ckpt.atomic_write(path, lambda f: f.write("".join(k + "\n" for k in keep).encode()))


class _StopRequested:
    """SIGINT/SIGTERM handler that lets the current step finish before stopping."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: keep default behaviour
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


_compiled_in_this_process = False


def _compile_kernels_once(model, data, log):
    """For a Numba model, compile the kernels on one tiny batch before the progress bar
    starts (its first step would otherwise take seconds and skew the time estimate)."""
    global _compiled_in_this_process
    if model.backend != "numba" or _compiled_in_this_process:
        return
    log("preparing the Numba kernels (compiled on first use: 5-10 s; cached on disk after)")
    x, y = get_batch(data, 1, model.config.max_len, np.random.default_rng(0))
    model.loss_and_grads(x, y)  # pure: no parameter or optimizer state changes
    _compiled_in_this_process = True


ENGINES = ("numpy", "torch")


def train(
    model_config,
    train_config,
    out_dir,
    *,
    resume=False,
    force=False,
    progress=True,
    log=print,
    stop_after=None,
    backend="numba",
    engine="numpy",
    device="auto",
    bf16=False,
    compile=False,
    tiles=None,
):
    """Train and return a summary dict (final val BPC, wall time, sample, paths).

    ``resume=True`` continues the run saved in ``out_dir``: the configs given must
    equal the saved ones except for ``steps`` (get them with :func:`resumed_settings`),
    and the data must be byte for byte what the run started on; otherwise
    :class:`RunConflict`. A fresh run into a directory that already holds a
    checkpoint or metrics raises :class:`RunConflict` before touching anything,
    unless ``force=True``, which deletes them. ``stop_after=n`` stops after n
    steps of this call exactly as an interruption would (checkpoint saved,
    resumable): for time-boxed runs and for testing resumption.

    ``engine`` computes the steps: ``"numpy"``, minisynth's own hand-written passes,
    with ``backend`` the code the model and the optimizer are built with (``"numba"``,
    the fast path, or ``"numpy"``, the reference; see :mod:`minisynth.backend`); or
    ``"torch"``, the PyTorch twin (:mod:`minisynth.torch_engine`, the ``torch`` extra)
    on ``device`` (``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``), optionally with bfloat16
    autocast (``bf16``) and ``torch.compile`` (``compile``). ``tiles``: when the
    fast path computes attention in tiles (:func:`minisynth.attention.check_tiles`;
    None: ``$MINISYNTH_TILES``, else ``"auto"``). Everything else is
    the same loop: data, batches, schedule, clipping, evaluation, metrics, checkpoints
    and the run folder's rules; a run may continue on either engine.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    check_backend(backend)
    if engine == "numpy":
        if bf16 or compile:
            raise ValueError("--bf16 and --compile are options of --engine torch")
        if launched_by_torchrun():
            raise ValueError("several processes (torchrun) train with --engine torch only")
        run = _open_run(
            model_config, train_config, Path(out_dir), resume, force, log, backend, tiles=tiles
        )
        with run:  # the run folder's lock, until the end however it ends
            return _train_loop(run, NumpyEngine(run), progress, log, stop_after)
    torch_engine = _torch_engine_module()
    # the run's NumPy copy only saves, evaluates what the loop did not, and samples
    return torch_engine.train_on_torch(
        lambda run_log: _open_run(model_config, train_config, Path(out_dir), resume, force,
                                    run_log, "numpy", step_memory=False),
        progress=progress, log=log, stop_after=stop_after, device=device, bf16=bf16,
        compile=compile,
    )  # fmt: skip


def launched_by_torchrun():
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _torch_engine_module():
    try:
        from . import torch_engine
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        raise ModuleNotFoundError(
            'the torch engine needs PyTorch: pip install "minisynth[torch]"', name="torch"
        ) from None
    return torch_engine


class NumpyEngine:
    """The steps of a run computed by minisynth itself: the run's model and AdamW."""

    name = "numpy"
    primary = True  # the one process: it writes the run's files

    def __init__(self, run):
        self.run = run

    def agree_to_stop(self, requested):
        return requested

    def prepare(self, log):
        _compile_kernels_once(self.run.model, self.run.splits["train"], log)

    def forward_backward(self, x, y):
        """The mean loss of a batch; its gradients are kept for :meth:`update`."""
        loss, self.grads = fast.loss_and_grads(self.run.model, x, y)
        return loss

    def update(self, lr, grad_clip):
        if grad_clip > 0:
            clip_grad_norm(self.grads, grad_clip)
        self.run.optimizer.step(self.grads, lr=lr)

    def evaluate(self, data):
        return evaluate(self.run.model, data)

    def sync(self):
        """Bring the run's model and optimizer up to date before a save (nothing to do)."""


def _train_loop(run, engine, progress, log, stop_after):
    settings, model, splits = run.settings, run.model, run.splits
    engine.prepare(log)
    t_start = time.perf_counter()
    step, val_bpc, throughput = run.start, None, _Throughput()
    last = settings.steps if stop_after is None else min(settings.steps, run.start + stop_after)
    bar = tqdm(total=settings.steps, initial=step, disable=not progress or not engine.primary,
               unit="step", dynamic_ncols=True)  # fmt: skip
    # one process writes the run's files; the others of a distributed run compute alike
    metrics_file = run.metrics.open("a") if engine.primary else open(os.devnull, "w")  # noqa: SIM115
    with _StopRequested() as stop, metrics_file as metrics, bar:
        while step < last and not engine.agree_to_stop(stop.requested):
            lr = lr_schedule(step, max_lr=settings.lr, warmup_steps=settings.warmup_steps,
                             total_steps=settings.steps, min_lr=settings.min_lr)  # fmt: skip
            x, y = get_batch(splits["train"], settings.batch_size, model.config.max_len, run.rng)
            loss = engine.forward_backward(x, y)
            _check_finite(loss, step, lr, run.checkpoint)
            engine.update(lr, settings.grad_clip)
            step += 1
            throughput.count(x.size)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            evaluated = step % settings.eval_interval == 0 or step == settings.steps
            if step % settings.log_interval == 0 or evaluated:
                record = {"step": step, "lr": lr, "loss": loss, "tokens_per_s": throughput.rate(),
                          "engine": engine.name}  # fmt: skip
                if evaluated:
                    val_bpc = record["val_bpc"] = engine.evaluate(splits["val"])
                    bar.write(f"step {step}: train loss {loss:.4f}, val BPC {val_bpc:.4f}")
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                throughput.restart()  # evaluation time excluded
            if evaluated and engine.primary:
                engine.sync()
                run.save(step)
        if step < settings.steps and engine.primary:
            engine.sync()
            run.save(step)
            log(f"interrupted: saved step {step} to {run.checkpoint}; continue with --resume")
    engine.sync()
    result = _summary(run, step, val_bpc, wall=time.perf_counter() - t_start,
                      sample=engine.primary)  # fmt: skip
    result["primary"] = engine.primary  # False in the other processes of a torchrun group
    return result


# --------------------------------------------------------------- the run's bookkeeping
@dataclass
class _Run:
    """An open run: the model, optimizer and data RNG a training loop advances, and
    where they are saved."""

    out: Path
    checkpoint: Path
    metrics: Path
    settings: TrainConfig  # its data spec canonical (a file path absolute)
    model: SynthesizerLM
    optimizer: AdamW
    rng: np.random.Generator
    start: int  # steps already done
    splits: dict  # "train", "val", "test" -> (n,) uint8
    fingerprint: dict  # the data's size and SHA-256
    lock: RunLock  # held until the run ends

    def save(self, step):
        try:
            ckpt.save_checkpoint(
                self.checkpoint,
                self.model,
                optimizer=self.optimizer,
                step=step,
                rng=self.rng,
                train_config=dataclasses.asdict(self.settings),
                data=self.fingerprint,
            )
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            kept = (
                f"the last good checkpoint, {self.checkpoint}, is intact: continue with "
                "--resume once there is room" if self.checkpoint.exists()
                else "no checkpoint was written yet"
            )  # fmt: skip
            raise OSError(
                errno.ENOSPC, f"no space left on the device of {self.out} at step {step}; {kept}"
            ) from None

    def __enter__(self):
        return self

    def __exit__(self, error, *_):
        # a fresh run that failed before its first checkpoint leaves a folder a new run takes
        if error is not None and self.start == 0 and not self.checkpoint.exists():
            self.metrics.unlink(missing_ok=True)
        self.lock.release()


def _open_run(model_config, train_config, out, resume, force, log, backend, step_memory=True,
              tiles=None):  # fmt: skip
    """Lock the run folder, check the request, load the data and the model (fresh or
    resumed): a :class:`_Run`. A refusal unlocks and changes nothing."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()
    try:
        return _open_locked_run(model_config, train_config, out, resume, force, log, backend,
                                lock, step_memory, check_tiles(tiles))  # fmt: skip
    except BaseException:
        lock.release()
        if created:  # leave no trace of a refused run: the folder held nothing before
            lock.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _holds_run(checkpoint, metrics):
    """The names of a run's files in its folder (an empty metrics file is no run: a fresh
    run that failed before logging anything)."""
    held = [checkpoint] if checkpoint.exists() else []
    if metrics.exists() and metrics.stat().st_size > 0:
        held.append(metrics)
    return [p.name for p in held]


def _open_locked_run(model_config, train_config, out, resume, force, log, backend, lock,
                     step_memory, tiles):  # fmt: skip
    checkpoint, metrics = out / CHECKPOINT_NAME, out / METRICS_NAME
    if not resume and not force:
        held = _holds_run(checkpoint, metrics)
        if held:
            raise RunConflict(
                f"{out} already holds a run ({' and '.join(held)}); continue it with --resume, "
                "start over with --force (deletes them), or choose another --out"
            )
    # a file path is saved absolute, so that a run resumes from any working directory
    settings = dataclasses.replace(train_config, data=canonical_data_spec(train_config.data))
    if step_memory:  # before any array is allocated
        tiled = takes_tiles(model_config.max_len, tiles, backend)
        check_step_memory(model_config, settings, tiled)
    else:  # the torch engine: its steps' memory is PyTorch's, on its device
        check_model_size(model_config)
    saved = _resumed_checkpoint(checkpoint, model_config, settings, backend) if resume else None
    splits, description, fingerprint = _checked_data(settings, model_config, saved)
    sweep_temporaries(out)  # left by a run killed mid-write; never read
    if resume:
        model, data = saved
        start = int(data["step"])  # checked by _resumed_checkpoint
        # an imported model has no data RNG or optimizer state yet: both start afresh
        has_rng = bool(ckpt.saved_json(data, "rng_state"))
        rng = (
            ckpt.restore_rng(data, checkpoint) if has_rng else np.random.default_rng(settings.seed)
        )
    else:
        model = SynthesizerLM(model_config, seed=settings.seed, backend=backend)
        rng, start = np.random.default_rng(settings.seed), 0
    model.tiles = tiles
    optimizer = run_optimizer(model, settings, backend)
    if resume:
        if ckpt.optimizer_state(data):
            optimizer.load_state_dict(ckpt.optimizer_state(data))
        else:
            log("the checkpoint holds no optimizer state (an imported model): AdamW starts afresh")
        _trim_metrics(metrics, start)  # the last change: every check is behind
        log(f"resuming {checkpoint} at step {start} of {settings.steps}")
    else:
        checkpoint.unlink(missing_ok=True)
        metrics.unlink(missing_ok=True)
    log(
        f"{model_config.attention}: {model.num_params():,} parameters, data {description}, "
        f"backend {model.backend}"
    )
    return _Run(out, checkpoint, metrics, settings, model, optimizer, rng, start, splits,
                fingerprint, lock)  # fmt: skip


def run_optimizer(model, settings, backend="numpy"):
    """The AdamW of a run: its learning rate, decay and R multiplier (fresh state)."""
    return AdamW(model.params, lr=settings.lr, weight_decay=settings.weight_decay,
                 lr_scale=synthetic_logits_lr_scale(settings.synthetic_lr_scale),
                 backend=backend)  # fmt: skip


def _resumed_checkpoint(checkpoint, model_config, settings, backend):
    """(model, checkpoint dict) of the run to resume, refused if the request differs."""
    if not checkpoint.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
    model, data = ckpt.load_checkpoint(checkpoint, backend=backend)
    step = np.asarray(data["step"])
    if step.shape != () or not np.issubdtype(step.dtype, np.integer) or int(step) < 0:
        raise RunConflict(
            f"--resume: {checkpoint} holds the step counter {step.tolist()!r}, not a "
            "non-negative integer; it cannot be continued"
        )
    start = int(step)
    saved_model_config, saved_config, _ = _saved_settings(data)
    expected = _merged_settings(saved_model_config, saved_config, {"steps": settings.steps})
    differences = setting_differences(expected[0], model_config)
    if saved_config is not None:
        differences += setting_differences(expected[1], settings)
    if differences:
        raise RunConflict(
            f"--resume: the request differs from the run saved in {checkpoint.parent}: "
            + "; ".join(f"{k} saved {a!r}, given {b!r}" for k, a, b in differences),
            differences,
        )
    if settings.steps < start:
        raise RunConflict(
            f"--resume: --steps {settings.steps} is below the {start} steps the run has done"
        )
    return model, data


def _checked_data(settings, model_config, saved):
    """(splits, description, fingerprint) of the run's data; a resumed run's must be the
    data it started on, and every split long enough for one window."""
    splits, description = load_data(settings.data)
    fingerprint = data_fingerprint(settings.data, splits)
    saved_data = _saved_settings(saved[1])[2] if saved is not None else {}
    if saved_data and saved_data["sha256"] != fingerprint["sha256"]:
        raise RunConflict(
            f"--resume: the data {settings.data} changed since the run started (size "
            f"{saved_data.get('size', '?')} -> {fingerprint['size']} bytes, SHA-256 "
            f"{saved_data['sha256'][:12]}... -> {fingerprint['sha256'][:12]}...); restore it, "
            "or start a new run with another --out"
        )
    T = model_config.max_len
    for name in ("train", "val"):
        if splits[name].size < T + 1:
            raise ValueError(
                f"the {name} split of {description} has {splits[name].size} bytes, too few for "
                f"max_len {T} (it needs at least {T + 1}); lower --max-len or use more data"
            )
    return splits, description, fingerprint


def check_step_memory(model_config, settings, tiled=False):
    """Refuse, before anything is allocated, a run whose training step would need more than
    :func:`~minisynth.model.memory_limit` bytes: the parameters with their gradients and
    AdamW moments, the batch, and an estimate of the activations a step keeps (float32;
    ``tiled``: attention in tiles, no (B,H,T,T) map)."""
    params = check_model_size(model_config)  # the model alone, and its own message
    B, T, C = settings.batch_size, model_config.max_len, model_config.d_model
    H, V = model_config.n_heads, model_config.vocab_size
    # per position: ~30 (B,T,C)-sized arrays per block (norms, q k v, MLP at 4C, their
    # gradients), ~3 (B,H,T,T) attention maps per block unless tiled, the logits and
    # their softmax
    maps = 0 if tiled else 3 * H * T
    per_position = model_config.n_layers * (30 * C + maps) + 3 * V
    step = 4 * params + 4 * B * T * per_position + 16 * B * T
    limit = memory_limit()
    if step > limit:
        raise ValueError(
            f"a training step of this run would need about {gib(step)} of memory, more than "
            f"the limit of {gib(limit)} ({MAX_BYTES_VARIABLE}): --batch-size {B} windows of "
            f"--max-len {T} bytes at --d-model {C}; lower them (or raise the limit)"
        )
    return step


class _Throughput:
    """Bytes trained per second since the last restart."""

    def __init__(self):
        self.restart()

    def restart(self):
        self.since, self.tokens = time.perf_counter(), 0

    def count(self, tokens):
        self.tokens += tokens

    def rate(self):
        return self.tokens / max(time.perf_counter() - self.since, 1e-9)


def _check_finite(loss, step, lr, checkpoint):
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the training loss became {loss} at step {step + 1}; the learning rate "
            f"({lr:.3g}) is probably too high for this model. The last good checkpoint "
            f"{checkpoint if checkpoint.exists() else '(none yet)'} is untouched"
        )


def _summary(run, step, val_bpc, wall, sample=True):
    """The result of :func:`train`: the final validation BPC and what puts it in context."""
    settings, splits = run.settings, run.splits
    if val_bpc is None:
        val_bpc = evaluate(run.model, splits["val"])
    result = {
        "attention": run.model.config.attention,
        "steps": step,
        "val_bpc": val_bpc,
        "wall_time_s": wall,
        "checkpoint": str(run.checkpoint),
        "metrics": str(run.metrics),
        "interrupted": step < settings.steps,
        # for scale: a uniform guess over 256 bytes, and the train split's byte frequencies
        "uniform_bpc": math.log2(256),
        "unigram_bpc": unigram_bpc(splits["train"], splits["val"]),
    }
    if sample and step == settings.steps and settings.sample_length:
        prompt = splits["val"][:64]
        result["sample_prompt"] = decode(prompt)
        result["sample"] = decode(
            run.model.generate(prompt, settings.sample_length, seed=settings.seed)
        )
    return result
