"""The PyTorch engine of ``minisynth train --engine torch``: the same run, other hands.

:func:`minisynth.train.train` owns the run (data, batches, schedule, evaluation windows,
metrics, checkpoints, the run folder's lock and rules); an engine only computes the
steps. :class:`TorchEngine` computes them with :class:`~minisynth.torch_model.SynthesizerTorch`,
autograd and ``torch.optim.AdamW`` on any device, from the run's own model and optimizer
state, and writes both back into the run before every save, so the checkpoint is the
same file the NumPy engine writes: ``eval``, ``sample``, ``plot`` and ``--resume`` (on
either engine) read it as any other.

The optimizer state maps one to one: minisynth's ``m``, ``v`` and step ``t`` are
``torch.optim.AdamW``'s ``exp_avg``, ``exp_avg_sq`` and ``step``; its decay groups and
R learning-rate multiplier are the same (:func:`~minisynth.torch_model.adamw_like`).
The update equations are the same too, so in float64 the two engines agree to
rounding (``tests/test_torch_engine.py``).

**Several processes.** Under ``torchrun --nproc_per_node N -m minisynth train --engine
torch ...`` (:func:`train_on_torch`), the processes form a ``torch.distributed`` group
(gloo on the CPU, nccl on CUDA) and the model is wrapped in
``DistributedDataParallel``. Process 0 opens the run (the folder's lock, its checks,
``--resume``) and sends the others its state; every process draws the same global batch
from the one seeded stream and trains on its own slice of rows, DDP averages the
gradients, so the step is the single-process step on the whole batch. Evaluation
windows are shared out and their sums added. Only process 0 writes metrics,
checkpoints and samples; a stop request (Ctrl-C, SIGTERM) in any process stops all of
them at the same step. A checkpoint holds no trace of the process count: a run resumes
on any number of processes (the batch size must divide among them) or on one.

Imported only for ``--engine torch``: ``import minisynth`` never imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .data import iter_eval_windows, load_data
from .model import ModelConfig, SynthesizerLM
from .torch_model import TORCH_DTYPES, SynthesizerTorch, adamw_like
from .train import TrainConfig, _Run, _train_loop, launched_by_torchrun, run_optimizer

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device):
    """``"auto"``: CUDA if available, else MPS if available, else the CPU."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device in available and not available[device]():
        raise ValueError(f"--device {device}: this PyTorch sees no {device} device")
    return device


class TorchEngine:
    """Training steps of a run (:class:`minisynth.train._Run`) in PyTorch on ``device``;
    with ``distributed=True``, this process's share of a ``torch.distributed`` group's."""

    name = "torch"

    def __init__(self, run, device="auto", distributed=False, bf16=False, compile=False):
        self.run = run
        self.device = torch.device(resolve_device(device))
        self.net = SynthesizerTorch.from_minisynth(run.model).to(self.device)
        self.params = dict(self.net.named_parameters())  # contract name -> tensor
        self.optimizer = adamw_like(self.net, run.optimizer)
        self._load_optimizer_state(run.optimizer)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        self.primary = self.rank == 0  # the process that writes the run's files
        self.module = DistributedDataParallel(self.net) if distributed else self.net
        if compile:  # the training forward only; evaluation runs the plain module
            self.module = torch.compile(self.module)
        # bf16 autocast: matrix products in bfloat16, weights and AdamW in float32
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        self.bf16, self.compiled = bf16, compile

    def agree_to_stop(self, requested):
        """Whether any process was asked to stop: all of them stop at the same step."""
        if self.world == 1:
            return requested
        flag = torch.tensor([int(requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _mean_over_processes(self, value):
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total.item()) / self.world

    def _load_optimizer_state(self, ours):
        """minisynth's m, v and t as torch AdamW's exp_avg, exp_avg_sq and step."""
        if ours.t == 0:
            return  # a fresh optimizer: torch creates its state on the first step
        for name, param in self.params.items():
            self.optimizer.state[param] = {
                "step": torch.tensor(float(ours.t)),
                "exp_avg": torch.from_numpy(ours.m[name].copy()).to(self.device),
                "exp_avg_sq": torch.from_numpy(ours.v[name].copy()).to(self.device),
            }

    def prepare(self, log):
        dtype = str(TORCH_DTYPES[self.run.model.dtype]).removeprefix("torch.")
        log(f"engine torch {torch.__version__} on {self.device}, {dtype} weights"
            + (", bf16 autocast" if self.bf16 else "") + (", torch.compile" if self.compiled
                                                           else ""))  # fmt: skip

    def _tensor(self, idx):
        return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(self.device)

    def forward_backward(self, x, y):
        """The mean loss of a batch (B,T); its gradients stay in the parameters' ``.grad``.

        In a group, this process takes its slice of the rows and DDP averages the
        gradients (equal slices: the gradient of the whole batch's mean loss)."""
        rows = x.shape[0] // self.world
        x, y = (a[self.rank * rows : (self.rank + 1) * rows] for a in (x, y))
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            _, loss = self.module(self._tensor(x), self._tensor(y))
        loss.backward()
        return self._mean_over_processes(float(loss.detach()))

    def update(self, lr, grad_clip):
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), grad_clip)
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self, data, batch_size=32):
        """Bits per character over ``data`` in the windows :func:`minisynth.train.evaluate`
        walks."""
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss total, count
        windows = iter_eval_windows(data, self.net.config.max_len, batch_size)
        for i, (x, y) in enumerate(windows):
            if i % self.world == self.rank:  # in a group: every world-th batch of windows
                with self.autocast:
                    _, loss = self.net(self._tensor(x), self._tensor(y))
                sums += torch.tensor([float(loss) * y.size, y.size], dtype=torch.float64,
                                     device=self.device)  # fmt: skip
        if self.world > 1:
            dist.all_reduce(sums)
        return float(sums[0] / sums[1]) / math.log(2.0)

    @torch.no_grad()
    def sync(self):
        """Copy the weights and the optimizer state into the run's model and AdamW."""
        ours = self.run.optimizer
        for name, param in self.params.items():
            np.copyto(self.run.model.params[name], param.detach().cpu().numpy())
            state = self.optimizer.state.get(param)
            if state:
                np.copyto(ours.m[name], state["exp_avg"].cpu().numpy())
                np.copyto(ours.v[name], state["exp_avg_sq"].cpu().numpy())
                ours.t = int(state["step"])


# ------------------------------------------------------------- several processes
class _NoLock:
    """The lock of a replica: process 0 holds the run folder's."""

    def release(self):
        pass


def _replica_state(run):
    """What the other processes need of process 0's open run."""
    return {
        "settings": dataclasses.asdict(run.settings),
        "config": run.model.config.to_json(),
        "dtype": str(run.model.dtype),
        "params": run.model.params,
        "buffers": run.model.buffers,
        "optimizer": run.optimizer.state_dict(),
        "rng": run.rng.bit_generator.state,
        "start": run.start,
        "paths": (run.out, run.checkpoint, run.metrics),
        "fingerprint": run.fingerprint,
    }


def _replica_run(state):
    """The run as process 0 opened it, rebuilt in another process (it writes nothing)."""
    settings = TrainConfig(**state["settings"])
    model = SynthesizerLM(ModelConfig.from_json(state["config"]), dtype=np.dtype(state["dtype"]))
    model.load_state(state["params"], state["buffers"])
    optimizer = run_optimizer(model, settings)
    optimizer.load_state_dict(state["optimizer"])
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    splits, _ = load_data(settings.data)
    return _Run(*state["paths"], settings, model, optimizer, rng, state["start"], splits,
                state["fingerprint"], _NoLock())  # fmt: skip


def train_on_torch(open_run, *, progress, log, stop_after, device, bf16=False, compile=False):
    """Run :func:`minisynth.train.train`'s loop on a :class:`TorchEngine`: in this process,
    or, started by torchrun, as one process of a DistributedDataParallel group.
    ``open_run(log)`` opens the run folder (process 0 only, in a group)."""
    if not launched_by_torchrun():
        run = open_run(log)
        with run:
            engine = TorchEngine(run, device=device, bf16=bf16, compile=compile)
            return _train_loop(run, engine, progress, log, stop_after)
    device = resolve_device(device)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    try:
        if dist.get_rank() == 0:
            options = dict(device=device, distributed=True, bf16=bf16, compile=compile)
            result = _train_first(open_run, progress, log, stop_after, options)
        else:
            result = _train_replica(device, stop_after, bf16, compile)
        # Process 0 still writes the checkpoint and the sample when the others are done:
        # a process that closed the group then (gloo) could abort at exit.
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _train_replica(device, stop_after, bf16, compile):
    """Every process but 0: rebuild process 0's run and train on its share of each batch."""
    box = [None]
    dist.broadcast_object_list(box, src=0)  # process 0's run, or why it could not open it
    if "error" in box[0]:
        raise RuntimeError(f"process 0 could not open the run: {box[0]['error']}")
    run = _replica_run(box[0])
    engine = TorchEngine(run, device=device, distributed=True, bf16=bf16, compile=compile)
    return _train_loop(run, engine, False, lambda *a, **k: None, stop_after)


def _train_first(open_run, progress, log, stop_after, options):
    """Process 0 of a group: open the run, share it, train and write."""
    world = dist.get_world_size()
    try:
        run = open_run(log)
    except BaseException as err:
        dist.broadcast_object_list([{"error": f"{err}"}], src=0)
        raise
    with run:
        if run.settings.batch_size % world:
            error = ValueError(
                f"--batch-size {run.settings.batch_size} does not divide among {world} "
                "processes; choose a multiple of the process count"
            )
            dist.broadcast_object_list([{"error": f"{error}"}], src=0)
            raise error
        dist.broadcast_object_list([_replica_state(run)], src=0)
        log(f"{world} processes (torch.distributed, {dist.get_backend()}), "
            f"{run.settings.batch_size // world} rows of each batch per process")  # fmt: skip
        return _train_loop(run, TorchEngine(run, **options), progress, log, stop_after)
