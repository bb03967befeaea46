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

Imported only for ``--engine torch``: ``import minisynth`` never imports torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import iter_eval_windows
from .torch_model import TORCH_DTYPES, SynthesizerTorch, adamw_like

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
    """Training steps of a run (:class:`minisynth.train._Run`) in PyTorch on ``device``."""

    name = "torch"

    def __init__(self, run, device="auto"):
        self.run = run
        self.device = torch.device(resolve_device(device))
        self.net = SynthesizerTorch.from_minisynth(run.model).to(self.device)
        self.params = dict(self.net.named_parameters())  # contract name -> tensor
        self.optimizer = adamw_like(self.net, run.optimizer)
        self._load_optimizer_state(run.optimizer)

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
        log(f"engine torch {torch.__version__} on {self.device}, "
            f"{str(TORCH_DTYPES[self.run.model.dtype]).removeprefix('torch.')}")  # fmt: skip

    def _tensor(self, idx):
        return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(self.device)

    def forward_backward(self, x, y):
        """The mean loss of a batch (B,T); its gradients stay in the parameters' ``.grad``."""
        self.optimizer.zero_grad(set_to_none=True)
        _, loss = self.net(self._tensor(x), self._tensor(y))
        loss.backward()
        return float(loss.detach())

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
        total, count = 0.0, 0
        for x, y in iter_eval_windows(data, self.net.config.max_len, batch_size):
            _, loss = self.net(self._tensor(x), self._tensor(y))
            total += float(loss) * y.size
            count += y.size
        return total / count / math.log(2.0)

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
