# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
# %% [markdown]
# # 11 · To PyTorch and back
#
# Two CPU cores are enough to understand a Synthesizer, not to train the
# paper's models (hundreds of thousands of steps on accelerators). The way out
# is PyTorch: `minisynth.torch_model.SynthesizerTorch` is the same model as
# `SynthesizerLM`, for every attention kind and mixture, written as a PyTorch
# user writes it (autograd, `scaled_dot_product_attention` for vanilla, any
# device). Weights travel both ways through a directory of two files:
#
# * `model.safetensors`: every parameter and buffer under minisynth's names
#   (`wte`, `blocks.0.attn.dense.W2`, ...), float32;
# * `config.json`: the `ModelConfig` and a format version.
#
# `minisynth export` writes such a directory from a run and
# `SynthesizerTorch.from_pretrained` loads it; `save_pretrained` writes one from
# PyTorch and `minisynth import` turns it into a run that `eval`, `sample`,
# `plot` and `compare` accept. Here we go around that circle once: train in
# PyTorch (on a GPU if there is one), come back, and read the attention maps
# with minisynth.
#
# Needs PyTorch: `pip install "minisynth[torch]"`. Run as a script or as a
# notebook (jupytext); `MINISYNTH_TUTORIAL_TINY=1` for a quick run; files go to
# `tutorials/output/` or `$MINISYNTH_TUTORIAL_OUT`.

# %%
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from minisynth import ModelConfig, SynthesizerLM
from minisynth.checkpoint import save_checkpoint
from minisynth.cli import main as minisynth_cli
from minisynth.data import get_batch, iter_eval_windows, load_data
from minisynth.torch_model import SynthesizerTorch, make_adamw
from minisynth.viz import (
    attention_maps,
    encode_text,
    load_model,
    mixture_weights,
    plot_alpha,
    plot_attention_grid,
    show_figure,
)

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)
WORK = OUT / "11_pytorch_and_back"
shutil.rmtree(WORK, ignore_errors=True)  # a fresh start on every run


if torch.cuda.is_available():
    DEVICE = "cuda"
elif torch.backends.mps.is_available():
    DEVICE = "mps"
else:
    DEVICE = "cpu"
config = ModelConfig(attention="dense+vanilla", d_model=32 if TINY else 128,
                     n_layers=1 if TINY else 2, max_len=32 if TINY else 128)  # fmt: skip
STEPS, BATCH = (20, 8) if TINY else (400, 32)
print(f"device {DEVICE}, torch {torch.__version__}, tiny={TINY}")
print(config)

# %% [markdown]
# ## 1. minisynth -> PyTorch
#
# A model built (or trained) in minisynth, saved as a run, exported, and
# loaded in PyTorch with one call. Both compute the same logits up to float32
# rounding: the same weights, the same equations.

# %%
model = SynthesizerLM(config, seed=0)
run = WORK / "from_minisynth"
run.mkdir(parents=True)
save_checkpoint(run / "checkpoint.npz", model)  # what `minisynth train` leaves in its --out
minisynth_cli(["export", "--checkpoint", str(run), "--out", str(WORK / "exported")])
print(sorted(p.name for p in (WORK / "exported").iterdir()))

twin = SynthesizerTorch.from_pretrained(WORK / "exported")
idx = np.random.default_rng(0).integers(0, 256, (2, config.max_len))
with torch.no_grad():
    torch_logits = twin(idx).numpy()
diff = np.abs(torch_logits - model.forward(idx)).max() / np.abs(torch_logits).max()
print(f"max |PyTorch - minisynth| / max |logit| = {diff:.1e}")

# %% [markdown]
# ## 2. Training in PyTorch
#
# A fresh `SynthesizerTorch` starts from minisynth's initialisation rules
# (seeded by `torch.manual_seed`). We train it the PyTorch way: batches as
# tensors on the device, `loss.backward()`, `torch.optim.AdamW` with
# minisynth's weight-decay groups (`make_adamw`), gradient clipping at 1. The
# batches come from the bundled enwik8 prefix, as in `minisynth train`.

# %%
splits, description = load_data("bundled")
print(description)
torch.manual_seed(0)
net = SynthesizerTorch(config).to(DEVICE)
optimizer = make_adamw(net, lr=3e-3)
rng = np.random.default_rng(0)
start = time.perf_counter()
for step in range(1, STEPS + 1):
    x, y = get_batch(splits["train"], BATCH, config.max_len, rng)  # (B,T) int64 each
    _, loss = net(torch.from_numpy(x).to(DEVICE), torch.from_numpy(y).to(DEVICE))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimizer.step()
    if step % max(1, STEPS // 8) == 0 or step == STEPS:
        print(f"step {step:4d}  train BPC {loss.item() / np.log(2):.3f}")
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s on {DEVICE}")

# %% [markdown]
# ## 3. ... and back to minisynth
#
# `save_pretrained` writes the two files (float32, whatever the device);
# `minisynth import` checks every tensor against `config.json` and writes a
# run folder. From there minisynth's tools take over: the validation BPC
# computed by minisynth (`minisynth eval`) matches PyTorch's on the same
# windows, and `minisynth plot` draws every layer and head.

# %%
net.save_pretrained(WORK / "trained_in_pytorch")
minisynth_cli(["import", str(WORK / "trained_in_pytorch"), "--out", str(WORK / "imported")])
minisynth_cli(["eval", "--checkpoint", str(WORK / "imported"), "--split", "val"])

total, count = 0.0, 0
with torch.no_grad():  # the same walk as minisynth.train.evaluate: every window of the split
    for xb, yb in iter_eval_windows(splits["val"], config.max_len, 32):  # (B',T) each
        _, loss = net(torch.from_numpy(xb).to(DEVICE), torch.from_numpy(yb).to(DEVICE))
        total += loss.item() * yb.size
        count += yb.size
print(f"val BPC computed by PyTorch: {total / count / np.log(2):.4f}")

# %% [markdown]
# The two numbers agree to the printed digits (float32 sums in a different
# order differ further down). Now the maps, read by minisynth from the imported
# run: `load_model` gives a `SynthesizerLM`, `attention_maps` its maps on a text,
# and `plot_attention_grid` draws every layer (rows) and head (columns). The
# imported run's own step counter starts at 0 (a `model.safetensors` carries
# weights, not a training history), so the title says how the weights were made.

# %%
imported, _ = load_model(WORK / "imported" / "checkpoint.npz")
text = "<title>Anarchism</title> is a political philosophy"
tokens = encode_text(text)[: config.max_len]
maps = attention_maps(imported, tokens)  # per layer (H, T, T)
weights = mixture_weights(imported)  # (n_layers, H, 2): softmax(alpha), dense then vanilla
path = plot_attention_grid(
    maps,
    OUT / "11_pytorch_and_back.png",
    tokens=tokens,
    kind=config.attention,
    mix_weights=weights,
    components=config.attention.split("+"),
    title=f"{config.attention}: {STEPS} steps in PyTorch on {DEVICE}, imported into minisynth",
)
print("saved", path)
show_figure(path)

# %% [markdown]
# What to look for: the first rows are bright for every head (row i has only
# i + 1 keys to choose from); a bright line just below the diagonal is a head
# reading the previous byte, the strongest single cue for the next one; and the
# vanilla half of the mixture can follow content (stripes at the spaces or at the
# `<` `>` of the tag), which the dense half cannot. How much each head leans on
# each half is the learned mixture weight softmax(alpha), which started at 0.5:

# %%
for layer, heads in enumerate(weights):
    cells = [f"head {h}: dense {w[0]:.2f} / vanilla {w[1]:.2f}" for h, w in enumerate(heads)]
    print(f"layer {layer}: " + "  ".join(cells))
path = plot_alpha(
    weights,
    OUT / "11_mixture_weights.png",
    components=config.attention.split("+"),
    title=f"softmax(alpha) after {STEPS} steps in PyTorch",
)
print("saved", path)
show_figure(path)

# %% [markdown]
# ## Exercises
#
# 1. Train the PyTorch model twice as long and import it again: which heads'
#    mixture weights moved further from 0.5, and do their maps change with them?
# 2. Export a model trained by `minisynth train` and continue training it in
#    PyTorch for 100 steps. Is its validation BPC after the round trip better than
#    100 more steps in minisynth would give? (Keep the learning rate schedule in
#    mind: the PyTorch loop above has none.)
# 3. `minisynth compare` draws several runs' maps side by side: compare the
#    imported model with a `minisynth train` run of the same config and steps.
