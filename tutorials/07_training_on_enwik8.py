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
# # 07 · Training a Synthesizer language model on enwik8
#
# Tutorials 01-05 built one attention layer, and 06 the whole network around it,
# forward and backward. Here we train that decoder-only language model,
# `minisynth.SynthesizerLM`, on bytes of English Wikipedia and measure it in
# **bits per character (BPC)**, the usual unit for character-level language
# modelling. Steps:
#
# 1. the data: the bundled 1 MiB prefix of enwik8, read as raw bytes, split 90/5/5;
# 2. the metric: cross-entropy in nats divided by ln 2; a uniform guess costs 8 bits;
# 3. the pieces of a training step, written out by hand: batch, loss and
#    gradients, clipping, learning-rate schedule, AdamW;
# 4. the same loop run properly by `minisynth.train.train`, with a loss curve;
# 5. sampling text from the trained model.
#
# Run as a script or as a notebook (jupytext). At full size the whole
# tutorial takes well under a minute on two cores (the training run prints
# its own time); `MINISYNTH_TUTORIAL_TINY=1` shrinks it to a few seconds (and
# the model then learns little). Files go to `tutorials/output/` or
# `$MINISYNTH_TUTORIAL_OUT`.

# %%
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from minisynth import ModelConfig, SynthesizerLM
from minisynth.checkpoint import load_checkpoint
from minisynth.data import get_batch, load_data
from minisynth.optim import AdamW, clip_grad_norm, default_decay_filter, lr_schedule
from minisynth.train import TrainConfig, decode, evaluate, train

TINY = os.environ.get("MINISYNTH_TUTORIAL_TINY", "0") not in ("", "0")
try:
    HERE = Path(__file__).resolve().parent  # run as a script
except NameError:
    HERE = Path.cwd()  # run as a notebook: Jupyter starts in the notebook's folder
OUT = Path(os.environ.get("MINISYNTH_TUTORIAL_OUT", HERE / "output"))
OUT.mkdir(parents=True, exist_ok=True)
LN2 = math.log(2.0)
print(f"tiny={TINY}, output folder: {OUT}")

# %% [markdown]
# ## 1. The data: bytes, not characters
#
# enwik8 is the first $10^8$ bytes of an English Wikipedia XML dump, the
# standard character-level benchmark. minisynth ships its first 1,048,576
# bytes inside the package, so everything here works offline
# (`minisynth data fetch` downloads the full file for real experiments).
# `load_data("bundled")` returns the three splits as 1-D `uint8` arrays, in
# file order: the first 90% for training, then 5% validation, 5% test.
#
# The model's vocabulary is the 256 possible byte values. Most of the text is
# ASCII (one byte per character), but any other character is several bytes of
# UTF-8, and the model has to predict those one byte at a time.

# %%
splits, description = load_data("bundled")
print(description)
train_data, val_data, test_data = splits["train"], splits["val"], splits["test"]
print("dtype:", train_data.dtype, "| first 300 bytes decoded:\n")
print(decode(train_data[:300]))

first = int(np.argmax(train_data >= 128))  # offset of the first byte outside ASCII
lead = int(train_data[first])  # a UTF-8 lead byte says how long its character is
n_bytes = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
chunk = train_data[first : first + n_bytes]
print(
    f"\nfirst non-ASCII character at offset {first}: bytes {chunk.tolist()} "
    f"decode to {decode(chunk)!r}, in context {decode(train_data[first - 20 : first + 20])!r}"
)

# %% [markdown]
# A training example is a window of T bytes `x` and the same window shifted by
# one, `y`: at every position the model predicts the next byte. `get_batch`
# draws B random windows from a split with a NumPy random generator.

# %%
rng = np.random.default_rng(0)
x, y = get_batch(train_data, 4, 32, rng)
print("x:", x.shape, x.dtype, " y:", y.shape)
print("x[0] =", repr(decode(x[0])))
print("y[0] =", repr(decode(y[0])))

# %% [markdown]
# ## 2. Bits per character
#
# The model outputs, at every position, a probability for each of the 256
# bytes. Its loss is the mean negative log-likelihood of the true next byte in
# **nats** (natural log). Dividing by $\ln 2$ converts to **bits**:
#
# $$\mathrm{BPC} = \frac{1}{N}\sum_{t} -\log_2 p(y_t \mid x_{\le t})
#   = \frac{\text{loss in nats}}{\ln 2}.$$
#
# (Strictly it is bits per *byte*; on enwik8 the two names are used
# interchangeably.) Reference points:
#
# * a uniform guess, $p = 1/256$, costs $\log_2 256 = 8$ bits;
# * a *unigram* model that only knows how often each byte occurs costs the
#   entropy of the byte distribution, about 5 bits here;
# * a freshly initialised model is nearly uniform: its logits are small.
#
# Large Transformers trained for days on the full enwik8 reach about 1 BPC.
# Our small model is trained for seconds on 1 MiB; section 4 prints where it
# lands against the uniform and unigram lines.

# %%
counts = np.bincount(train_data, minlength=256) + 1  # add-one smoothing: no zero probability
unigram = counts / counts.sum()
unigram_bpc = float(-np.mean(np.log2(unigram[val_data])))
print(
    f"uniform: {math.log2(256):.3f} BPC | unigram (fit on train, scored on val): "
    f"{unigram_bpc:.3f} BPC"
)

if TINY:
    model_config = ModelConfig(attention="dense", d_model=16, n_heads=2, n_layers=1, max_len=16)
else:
    model_config = ModelConfig(attention="dense", d_model=64, n_heads=4, n_layers=2, max_len=64)
model = SynthesizerLM(model_config, seed=0)
print(model)
x, y = get_batch(train_data, 8, model_config.max_len, rng)
loss = model.loss(x, y)
print(
    f"untrained model: loss {loss:.4f} nats = {loss / LN2:.3f} BPC (ln 256 = {math.log(256):.4f})"
)

# %% [markdown]
# ## 3. One training step, piece by piece
#
# Everything a training step needs is public:
#
# * `get_batch(split, B, T, rng)` gives inputs and targets;
# * `model.loss_and_grads(x, y)` runs the forward pass and the hand-written
#   backward pass, returning the loss (nats) and a dict of gradients keyed like
#   `model.params`;
# * `clip_grad_norm(grads, 1.0)` rescales all gradients together if their
#   global L2 norm exceeds 1 (a guard against rare huge steps);
# * `lr_schedule(step, ...)` gives a linear warmup then cosine decay;
# * `AdamW(model.params, ...)` holds references to the model's arrays and
#   updates them in place with `opt.step(grads, lr=...)`. Weight decay applies
#   to arrays of two or more dimensions: the weight matrices (and, by the same
#   rule, the dense synthesizer's per-head bias `b2` of shape (H, L)). It
#   never decays the embeddings (`wte`, `wpe`), the 1-D biases and gains, the
#   mixture logits `alpha`, or the synthetic logits `R`, `R1`, `R2` of the
#   Random kinds: those are attention logits themselves, and decay would pull
#   them towards uniform attention. `minisynth.optim.default_decay_filter(name,
#   array)` makes that choice; the cell prints it for this model (a `dense`
#   one, so it has no R).
#
# A few steps by hand, just to see the pieces move:

# %%
HAND_STEPS = 3 if TINY else 20
BATCH = 4 if TINY else 16
opt = AdamW(model.params, lr=3e-3, weight_decay=0.1)
decayed = [n for n, a in model.params.items() if default_decay_filter(n, a)]
print("weight decay on:", ", ".join(decayed))
print("no decay on:    ", ", ".join(n for n in model.params if n not in decayed))
for step in range(HAND_STEPS):
    lr = lr_schedule(
        step, max_lr=3e-3, warmup_steps=HAND_STEPS // 4, total_steps=HAND_STEPS, min_lr=3e-4
    )
    x, y = get_batch(train_data, BATCH, model_config.max_len, rng)
    loss, grads = model.loss_and_grads(x, y)
    norm = clip_grad_norm(grads, 1.0)  # returns the norm before clipping
    opt.step(grads, lr=lr)
    if step % max(1, HAND_STEPS // 5) == 0 or step == HAND_STEPS - 1:
        print(f"step {step:3d}  lr {lr:.2e}  grad norm {norm:6.3f}  loss {loss / LN2:.3f} BPC")

# %% [markdown]
# ## 4. A real run with `minisynth.train.train`
#
# `train(model_config, train_config, out_dir)` runs the same loop, and also
# evaluates validation BPC over the *whole* validation split (walked in
# non-overlapping windows of max_len bytes) every `eval_interval` steps, writes
# one JSON line per logged step to `out_dir/metrics.jsonl`, and saves a
# resumable checkpoint `out_dir/checkpoint.npz`. It builds its own model from
# the config (seeded by `TrainConfig.seed`), so the hand-trained one above is
# not reused.
#
# The full-size run has 2 layers, width 64, context 64 and batch 16; the log
# lines come from the evaluation steps, and the cell prints the wall time.

# %%
if TINY:
    train_config = TrainConfig(
        steps=12, batch_size=4, warmup_steps=2, eval_interval=6, log_interval=2, sample_length=0
    )
else:
    train_config = TrainConfig(
        steps=400,
        batch_size=16,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=50,
        eval_interval=100,
        log_interval=10,
        sample_length=0,
    )
run_dir = OUT / "07_run"
t0 = time.perf_counter()
result = train(model_config, train_config, run_dir, force=True, progress=False)
print(
    f"finished {result['steps']} steps in {time.perf_counter() - t0:.1f} s; "
    f"validation BPC {result['val_bpc']:.3f}"
)
gap = unigram_bpc - result["val_bpc"]
print(
    f"that is {8 - result['val_bpc']:.2f} bits below uniform and "
    + (f"{gap:.2f} bits below" if gap > 0 else f"{-gap:.2f} bits above")
    + f" the unigram line ({unigram_bpc:.3f})"
)

# %% [markdown]
# Mind the units in the log lines above: `train loss` is in nats (on one
# batch), `val BPC` in bits (on the whole validation split); divide the first
# by ln 2 = 0.693 to compare. `metrics.jsonl` holds the same: `step`, `lr`, the
# training `loss` in nats, `tokens_per_s` and, at evaluation steps, `val_bpc`.

# %%
records = [json.loads(line) for line in Path(result["metrics"]).read_text().splitlines()]
print(records[0])
print(records[-1])
steps = np.array([r["step"] for r in records])
train_bpc = np.array([r["loss"] for r in records]) / LN2
val_points = [(r["step"], r["val_bpc"]) for r in records if "val_bpc" in r]
print("validation BPC at step " + ", ".join(f"{s}: {b:.3f}" for s, b in val_points))
q = int(np.searchsorted(steps, steps[-1] / 4))  # the first record past a quarter of the run
fell, early = train_bpc[0] - train_bpc[-1], train_bpc[0] - train_bpc[q]
print(
    f"training BPC (one batch each): {train_bpc[0]:.2f} at step {steps[0]}, "
    f"{train_bpc[q]:.2f} at step {steps[q]}, {train_bpc[-1]:.2f} at step {steps[-1]}"
    + (f": {early / fell:.0%} of the fall came in the first quarter" if fell > 0 else "")
)

# %% [markdown]
# ## 5. The trained model: test BPC and samples
#
# `load_checkpoint` returns the model (and the raw checkpoint dict). We score
# the test split once, then sample. `generate(prompt, length, temperature,
# top_k)` feeds the model its own output one byte at a time, keeping the last
# max_len bytes as context. Temperature below 1 sharpens the distribution
# (safer, more repetitive text); `top_k` samples only among the k most likely
# bytes. Read the samples for what a small model trained briefly has
# learned: look for real words next to invented ones, spelling fragments and
# wiki markup (the `[[ ]]` of links), and no meaning. Under each sample a
# count says how many of its words (runs of two or more letters) occur as
# words anywhere in the training split: compare the two temperatures.

# %%
trained, _ = load_checkpoint(result["checkpoint"])
test_bpc = evaluate(trained, test_data)
print(f"test BPC {test_bpc:.3f}")


def printable(text):
    """Control characters (which a byte model may emit) shown as a dot; newlines kept."""
    return "".join(ch if ch.isprintable() or ch == "\n" else "·" for ch in text)


def words(text):
    """Runs of two or more ASCII letters (a run at the very start may continue the prompt)."""
    return re.findall(r"[A-Za-z]{2,}", text)


train_words = set(words(decode(train_data)))  # every word of the training split
start = bytes(val_data).find(b"\nThe ") + 1  # the first validation line starting with "The "
prompt = val_data[start : start + 40]  # prose, not XML markup
SAMPLE_LEN = 40 if TINY else 200
samples = {}
for temperature, top_k in ((1.0, None), (0.7, 10)):
    out = trained.generate(prompt, SAMPLE_LEN, temperature=temperature, top_k=top_k, seed=0)
    samples[(temperature, top_k)] = decode(out)
    print(f"--- temperature {temperature}, top_k {top_k} ---")
    print(printable(decode(prompt)) + "»" + printable(samples[(temperature, top_k)]) + "«")
    sampled = words(samples[(temperature, top_k)])
    known = sum(w in train_words for w in sampled)
    print(f"{known} of its {len(sampled)} words occur in the training split\n")

summary = [
    "| quantity | value |",
    "|---|---|",
    f"| model | {model_config.attention}, {trained.num_params():,} parameters |",
    f"| steps x batch x context | {result['steps']} x {train_config.batch_size} x "
    f"{model_config.max_len} |",
    f"| wall time | {result['wall_time_s']:.1f} s (train() runs on the fast path) |",
    "| uniform BPC | 8.000 |",
    f"| unigram BPC (val) | {unigram_bpc:.3f} |",
    f"| validation BPC | {result['val_bpc']:.3f} |",
    f"| test BPC | {test_bpc:.3f} |",
]
(OUT / "07_summary.md").write_text("\n".join(summary) + "\n", encoding="utf-8")
with open(OUT / "07_samples.txt", "w", encoding="utf-8") as f:
    for (temperature, top_k), text in samples.items():
        f.write(f"--- temperature {temperature}, top_k {top_k}; prompt in [[ ]] ---\n")
        f.write(f"[[{decode(prompt)}]]{text}\n\n")
print("\n".join(summary))

# %% [markdown]
# ## 6. Picture: where the bits go
#
# Left: how often each byte value occurs in the training split (log scale);
# the cell prints the most frequent bytes and the share of bytes >= 128, the
# pieces of multi-byte UTF-8 characters. Right: the loss curve in BPC,
# per-batch training loss and full validation BPC, against the uniform and
# unigram baselines: look for the fast early fall and the slow tail that the
# numbers under section 4 describe.

# %%
share = (counts - 1) / (counts - 1).sum()  # (256,) frequency of each byte value in train
top5 = np.argsort(share)[::-1][:5]  # the five most frequent byte values
print(
    "most frequent bytes: "
    + ", ".join(f"{chr(b)!r} {share[b]:.1%}" for b in top5)
    + f"; bytes >= 128: {share[128:].sum():.2%} of the split"
)
fig = Figure(figsize=(14, 4.8), layout="constrained")
ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.3])
ax1.bar(np.arange(256), counts - 1, width=1.0, color="tab:gray")
ax1.set_yscale("log")
ax1.set_xlim(-1, 256)
ax1.axvline(127.5, color="k", ls=":", lw=1)
top = (counts - 1).max()
ax1.set_ylim(0.5, top * 40)  # headroom for the labels
ax1.text(
    132, top * 10, "bytes >= 128:\nparts of multi-byte\nUTF-8 characters", fontsize=9, va="top"
)
labels = {ord("\n"): ("newline", 2, 8), ord(" "): ("space", 18, 1.5), ord("e"): ("'e'", 0, 8)}
for byte, (name, dx, height) in labels.items():  # dx, height: where the label sits
    ax1.annotate(
        name,
        (byte, counts[byte] - 1),
        xytext=(byte + dx, top * height),
        ha="left" if dx else "center",
        fontsize=9,
        arrowprops={"arrowstyle": "-", "color": "k", "lw": 0.7},
    )
ax1.set(
    title="byte frequencies in the train split", xlabel="byte value", ylabel="count (log scale)"
)

ax2.plot(steps, train_bpc, lw=1, alpha=0.7, label="train (per batch)")
if val_points:
    vs, vb = zip(*val_points, strict=True)
    ax2.plot(vs, vb, "o-", color="tab:red", label="validation (whole split)")
ax2.axhline(8.0, color="gray", ls="--", lw=1, label="uniform: 8 bits")
ax2.axhline(unigram_bpc, color="gray", ls=":", lw=1.5, label=f"unigram: {unigram_bpc:.2f}")
ax2.set(
    title=f"{model_config.attention} Synthesizer LM on the bundled enwik8 prefix",
    xlabel="step",
    ylabel="bits per character",
)
ax2.set_ylim(0, 8.6)
ax2.legend(loc="lower left")  # the curves stay above 3 bits: the corner is free
path = OUT / "07_loss_curve.png"
fig.savefig(path, dpi=100)
print("saved", path)
fig  # noqa: B018  (a notebook displays a bare last expression: the figure)

# %% [markdown]
# ## Exercises
#
# 1. **Budget.** Train for 2x and 4x the steps. How far does validation BPC keep
#    falling, and when does the gap between training and validation loss start to
#    grow (the prefix is only 1 MB)?
# 2. **Warmup.** Set `warmup_steps=0` and learning rate 1e-2. What happens in the
#    first 50 steps, and does gradient clipping save the run?
# 3. **Context.** Halve `max_len`. Which costs more BPC, half the context or half
#    the width (`d_model`)?
