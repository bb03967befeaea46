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
# # 12 · To PyTorch and back
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
# `plot` and `compare` accept. And `minisynth train --engine torch` trains the
# twin inside a minisynth run. Here we check the twin against minisynth, train it
# on PyTorch (on a GPU if there is one) as a minisynth run, go out through the
# files and back, and read the attention maps with minisynth.
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
from minisynth.torch_model import SynthesizerTorch
from minisynth.viz import (
    attention_maps,
    curves_for_runs,
    encode_text,
    load_model,
    mixture_weights,
    plot_alpha,
    plot_attention_grid,
    read_metrics,
    show_figure,
)

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)
WORK = OUT / "12_pytorch_and_back"
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
# ## 2. Training on PyTorch: the same run, another engine
#
# `minisynth train --engine torch` trains the PyTorch twin (autograd,
# `torch.optim.AdamW` with minisynth's weight-decay groups) on `--device` (a GPU
# when there is one), and everything around the steps stays minisynth's: the
# batches from the bundled enwik8 prefix (the same seeded stream), the warmup +
# cosine schedule, clipping, validation BPC, `metrics.jsonl` and the checkpoint.
# So the run keeps its curve and its step count, and every minisynth tool reads it.
# (`torchrun --nproc_per_node N -m minisynth train --engine torch ...` spreads the
# same run over N processes; the README's "When two cores are not enough" has the
# commands.)

# %%
RUN = WORK / "trained_on_torch"
flags = ["--attention", config.attention, "--d-model", str(config.d_model),
         "--n-layers", str(config.n_layers), "--max-len", str(config.max_len),
         "--batch-size", str(BATCH), "--steps", str(STEPS), "--warmup-steps", str(STEPS // 10),
         "--eval-interval", str(STEPS // 4), "--log-interval", str(max(1, STEPS // 40)),
         "--sample-length", "0", "--quiet"]  # fmt: skip
start = time.perf_counter()
minisynth_cli(["train", "--engine", "torch", "--device", DEVICE, *flags, "--out", str(RUN)])
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s on {DEVICE}")
curve = read_metrics(RUN / "metrics.jsonl")  # one record per logged step
print(
    f"{len(curve)} metrics records, engine {curve[-1]['engine']!r}, last step {curve[-1]['step']}"
)
path = curves_for_runs([str(RUN)], str(OUT / "12_curve.png"), log=lambda *a: None)
show_figure(path)

# %% [markdown]
# ## 3. ... and back to minisynth, and out again
#
# The checkpoint is minisynth's own: `minisynth eval` reads it directly, and its
# validation BPC is the one the run logged at its last step (computed there by
# PyTorch on the same windows). To hand the weights to other PyTorch code,
# `minisynth export` writes `model.safetensors` + `config.json`; `from_pretrained`
# loads them, `save_pretrained` writes them back, and `minisynth import` turns such
# a directory into a run folder again: the same weights, bit for bit.

# %%
minisynth_cli(["eval", "--checkpoint", str(RUN), "--split", "val"])
print(f"val BPC logged by the run at step {curve[-1]['step']}: {curve[-1]['val_bpc']:.4f}")
minisynth_cli(["export", "--checkpoint", str(RUN), "--out", str(WORK / "exported_run")])
net = SynthesizerTorch.from_pretrained(WORK / "exported_run", device=DEVICE)
net.save_pretrained(WORK / "round_trip")
minisynth_cli(["import", str(WORK / "round_trip"), "--out", str(WORK / "imported")])
trained, _ = load_model(RUN / "checkpoint.npz")
imported, _ = load_model(WORK / "imported" / "checkpoint.npz")
same = all(np.array_equal(trained.params[n], imported.params[n]) for n in trained.params)
print(f"every weight bit-identical after export, PyTorch and import: {same}")

# %% [markdown]
# Now the maps, read by minisynth from the run: `load_model` gives a
# `SynthesizerLM`, `attention_maps` its maps on a text, and `plot_attention_grid`
# draws every layer (rows) and head (columns).

# %%
text = "<title>Anarchism</title> is a political philosophy"
tokens = encode_text(text)[: config.max_len]
maps = attention_maps(trained, tokens)  # per layer (H, T, T)
weights = mixture_weights(trained)  # (n_layers, H, 2): softmax(alpha), dense then vanilla
path = plot_attention_grid(
    maps,
    OUT / "12_pytorch_and_back.png",
    tokens=tokens,
    kind=config.attention,
    mix_weights=weights,
    components=config.attention.split("+"),
    title=f"{config.attention} after {curve[-1]['step']} steps, trained on PyTorch ({DEVICE})",
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
    OUT / "12_mixture_weights.png",
    components=config.attention.split("+"),
    title=f"softmax(alpha) after {curve[-1]['step']} steps on PyTorch",
)
print("saved", path)
show_figure(path)

# %% [markdown]
# ## Exercises
#
# 1. Continue the run to twice as many steps (`--resume --steps`): which heads'
#    mixture weights moved further from 0.5, and do their maps change with them?
# 2. Continue the run for 100 more steps twice, from copies of its folder:
#    `--resume --steps ... --engine numpy` on one, `--engine torch` on the other.
#    How far apart are their losses after 100 steps, and why that far?
# 3. `minisynth compare` draws several runs' maps side by side: compare this run
#    with a `minisynth train --engine numpy` run of the same config and steps.
