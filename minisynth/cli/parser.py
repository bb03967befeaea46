"""The arguments of every ``minisynth`` sub-command, as data, and the parser built from them.

The ``train`` flags that set a field of :class:`~minisynth.model.ModelConfig` or
:class:`~minisynth.train.TrainConfig` take their defaults from the fields
themselves (:data:`CONFIG_FLAGS` holds only their types and help texts), so a
default changes in one place. Each other argument is ``(flags, argparse keyword
arguments)``; a list of them is a mutually exclusive group.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from .. import __version__
from ..attention import TILED_FROM
from ..backend import BACKENDS


def _number(convert, describe, ok):
    """An argparse type: ``convert(text)`` that must satisfy ``ok``, else a usage error."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {describe}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {describe}, got {text}")
        return value

    return parse


positive_int = _number(int, "a positive integer", lambda v: v > 0)
nonneg_int = _number(int, "a non-negative integer", lambda v: v >= 0)
positive_float = _number(float, "a positive finite number", lambda v: 0 < v < float("inf"))
nonneg_float = _number(float, "a non-negative finite number", lambda v: 0 <= v < float("inf"))


def json_object(text):
    """An argparse type: a JSON object such as '{"k": 8}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"k\": 8}}', got {text!r}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


class RecordTyped(argparse.Action):
    """Store the value and remember that the flag was typed (a resumed run refuses typed
    flags that differ from the saved run, but takes the saved value of untyped ones)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.typed = {*getattr(namespace, "typed", ()), self.dest}


def flag_name(field):
    return "--" + field.replace("_", "-")


# The train flags of ModelConfig and TrainConfig fields (vocab_size is fixed: bytes), in
# --help order: field -> (argparse type, help). The default is the field's.
CONFIG_FLAGS = {
    "attention": (str, "attention kind: vanilla, dense, random, random_fixed, factorized_dense, "
                  "factorized_random, or a mixture joined by + such as dense+vanilla"),
    "attention_options": (json_object, "options of the kind as a JSON object, e.g. '{\"k\": 8}' "
                          "(factorized_random's rank) or '{\"factors\": [8, 16]}' "
                          "(factorized_dense, whose product must be --max-len) (default: {}, "
                          "the kind's own defaults)"),
    "d_model": (positive_int, "model width C"),
    "n_heads": (positive_int, "attention heads H; must divide --d-model"),
    "n_layers": (positive_int, "Transformer blocks"),
    "max_len": (positive_int, "context length L = T, in bytes; Dense and Random are tied to it"),
    "batch_size": (positive_int, "windows of --max-len bytes per step"),
    "steps": (positive_int, "total optimisation steps of the run; the only flag --resume lets "
              "you change"),
    "lr": (positive_float, "peak learning rate of AdamW, reached after the warmup"),
    "min_lr": (nonneg_float, "learning rate at the end of the cosine decay; must not exceed --lr "
               "(default: %(default)s, or --lr if that is lower)"),
    "warmup_steps": (nonneg_int, "steps of linear warmup from 0 to --lr; must not exceed --steps "
                     "(default: %(default)s, or --steps if the run is shorter)"),
    "weight_decay": (nonneg_float, "AdamW's decoupled weight decay, applied to weight matrices "
                     "only (not to biases, gains, the embeddings, the mixture weights alpha or "
                     "the synthetic logits R, R1, R2)"),
    "grad_clip": (nonneg_float, "clip the global L2 norm of the gradients to this; 0 turns "
                  "clipping off"),
    "synthetic_lr_scale": (positive_float, "multiplies the learning rate of the Random kinds' "
                           "synthetic logits R, R1, R2, which Adam otherwise moves by at most "
                           "about --lr per step"),
    "eval_interval": (positive_int, "steps between validation BPC evaluations (over the whole "
                      "validation split) and checkpoints; the last step always evaluates"),
    "log_interval": (positive_int, "steps between lines of metrics.jsonl"),
    "sample_length": (nonneg_int, "bytes of text generated at the end of the run; 0 for none"),
    "data": (str, "bundled (the 1 MiB enwik8 prefix shipped with minisynth), enwik8 (after "
             "'minisynth data fetch') or a path to any file, split 90/5/5 into train/val/test"),
    "seed": (nonneg_int, "seed of the initial weights, the batches and the end sample"),
}  # fmt: skip


def config_defaults():
    """field -> default of every field of ModelConfig and TrainConfig."""
    from ..model import ModelConfig
    from ..train import TrainConfig

    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for config in (ModelConfig, TrainConfig)
        for f in dataclasses.fields(config)
    }


def config_flags():
    """The train flags of the configs' fields, as (flags, keyword arguments) pairs."""
    defaults = config_defaults()
    return [
        (
            (flag_name(name),),
            dict(
                type=kind,
                default=defaults[name],
                action=RecordTyped,
                help=text if "(default:" in text else text + " (default: %(default)s)",
            ),
        )
        for name, (kind, text) in CONFIG_FLAGS.items()
    ]


CHECKPOINT = (
    ("--checkpoint",),
    dict(required=True, help="run directory or checkpoint .npz file (required)"),
)
BACKEND = (("--backend",), dict(
    choices=BACKENDS, default="numba",
    help="the code that computes the model: numba (the fast path: Numba kernels, the batch split "
    "over the cores) or numpy (the reference, as written in minisynth.layers; slower, the same "
    "numbers to rounding) (default: %(default)s)"))  # fmt: skip
TILES = (("--tiles",), dict(
    choices=("auto", "always", "never"), default=None,
    help="when the numba backend computes attention in tiles, never storing a T x T map: "
    f"auto (from max_len {TILED_FROM} on), always or never (default: $MINISYNTH_TILES, "
    "else auto)"))  # fmt: skip
ENGINE = [
    (
        ("--engine",),
        dict(
            choices=("numpy", "torch"),
            default="numpy",
            help="what computes the training steps: numpy (minisynth's own "
            "forward and backward passes, on --backend) or torch (the PyTorch twin "
            "and torch.optim.AdamW, on --device; needs the torch extra). The run, "
            "its files and --resume are the same on both (default: %(default)s)",
        ),
    ),
    (
        ("--device",),
        dict(
            choices=("auto", "cpu", "cuda", "mps"),
            default="auto",
            help="with --engine torch: where the steps run; auto is CUDA, else MPS, "
            "else the CPU (default: %(default)s)",
        ),
    ),
    (("--bf16",), dict(action="store_true", help="with --engine torch: bfloat16 autocast for "
                       "the forward and backward passes (weights and AdamW stay float32) "
                       "(default: off)")),
    (("--compile",), dict(action="store_true", help="with --engine torch: torch.compile the "
                          "training forward (a slow first step; needs a C++ compiler on the CPU) "
                          "(default: off)")),
]  # fmt: skip
QUIET = (("--quiet",), dict(action="store_true", help="no progress bar (default: off)"))
FORMAT = (("--format",), dict(choices=("png", "svg", "pdf"), default=None,
                              help="image format (default: png)"))  # fmt: skip
VIZ_INPUT = [
    [
        (("--text",), dict(help="input text, encoded as UTF-8 bytes (default: use --from-split)")),
        (("--from-split",), dict(choices=("train", "val", "test"),
                                 help="take the input from the start of this split of --data "
                                 "(default: val)")),
    ],
    (("--length",), dict(type=positive_int, default=None,
                         help="bytes taken with --from-split (default: the smallest max_len of "
                         "the models)")),
    (("--data",), dict(default="bundled", help="data for --from-split (default: %(default)s)")),
    FORMAT,
    (("--scale",), dict(choices=("sqrt", "linear"), default="sqrt",
                        help="colour scale of the maps; sqrt shows spread-out attention "
                        "(default: %(default)s)")),
]  # fmt: skip

# name -> (help, examples, arguments); "CONFIG" stands for the config flags
COMMANDS = {
    "train": (
        "train a character-level Synthesizer LM on enwik8",
        ["minisynth train --attention random --out runs/random",
         "minisynth train --out runs/random --resume --steps 3000   # continue, or extend",
         "minisynth train --engine torch --device cuda --out runs/gpu   # on PyTorch"],
        ["CONFIG",
         (("--out",), dict(default="runs/default", help="run directory: checkpoint.npz and "
                           "metrics.jsonl go here (default: %(default)s)")),
         [(("--resume",), dict(action="store_true", help="continue the run in --out with its "
                               "saved model, data and schedule; only --steps may change "
                               "(default: off)")),
          (("--force",), dict(action="store_true", help="start over even if --out holds a run, "
                              "deleting its checkpoint and metrics (default: off: such a run is "
                              "refused)"))],
         QUIET, BACKEND, TILES, *ENGINE],
    ),
    "eval": (
        "bits per character of a checkpoint on a split",
        ["minisynth eval --checkpoint runs/default",
         "minisynth eval --checkpoint runs/default/checkpoint.npz --split test"],
        [CHECKPOINT,
         (("--data",), dict(default="bundled", help="bundled, enwik8 or a file path, as for "
                            "train (default: %(default)s)")),
         (("--split",), dict(choices=("val", "test"), default="val",
                             help="split (default: %(default)s)")),
         (("--batch-size",), dict(type=positive_int, default=32, help="windows of max_len bytes "
                                  "per forward pass; changes speed, not the result "
                                  "(default: %(default)s)")),
         BACKEND, TILES],
    ),
    "sample": (
        "generate text from a checkpoint",
        ["minisynth sample --checkpoint runs/default",
         'minisynth sample --checkpoint runs/default --prompt "The " --length 300 --top-k 10'],
        [CHECKPOINT,
         (("--prompt",), dict(default="\n", help="text to continue, encoded as UTF-8 bytes "
                              "(default: a newline)")),
         (("--length",), dict(type=nonneg_int, default=200,
                              help="bytes to generate (default: %(default)s)")),
         (("--temperature",), dict(type=positive_float, default=1.0, help="divides the logits "
                                   "before sampling; below 1 is more conservative "
                                   "(default: %(default)s)")),
         (("--top-k",), dict(type=positive_int, default=None, help="sample among the k most "
                             "likely bytes only (default: all 256)")),
         (("--seed",), dict(type=nonneg_int, default=0,
                            help="sampling seed (default: %(default)s)")),
         (("--overflow",), dict(choices=("refill", "slide"), default="refill",
                                help="when prompt and text outgrow max_len: 'refill' keeps the "
                                "last max_len/2 bytes and decodes on (fast); 'slide' re-runs the "
                                "last max_len bytes for every byte (always a full window, slow) "
                                "(default: %(default)s)")),
         BACKEND],
    ),
    "data fetch": (
        "download, verify and cache the full enwik8 (36 MB zip, 100 MB unpacked)",
        ["minisynth data fetch", "minisynth data fetch --url http://mirror.example/enwik8.zip"],
        [(("--dest",), dict(default=None, help="directory to keep it in (default: "
                            "$MINISYNTH_DATA, else the user cache directory)")),
         (("--url",), dict(default=None, help="mirror URL of enwik8.zip; the checksums still "
                           "apply (default: the official mattmahoney.net address)")),
         QUIET],
    ),
    "plot": (
        "draw every layer and head's attention on one input",
        ['minisynth plot --checkpoint runs/default --text "<title>Anarchism</title>"',
         "minisynth plot --checkpoint runs/default --from-split test --length 64 --format svg"],
        [CHECKPOINT, *VIZ_INPUT,
         (("--out",), dict(default=None, help="output directory (default: plots/ next to the "
                           "checkpoint)"))],
    ),
    "compare": (
        "the same input through several models, side by side",
        ['minisynth compare runs/default runs/vanilla --text "The quick brown fox" --out cmp',
         "minisynth compare runs/dense runs/random runs/vanilla --layer 0 --out cmp"],
        [(("checkpoints",), dict(nargs="+", metavar="CHECKPOINT",
                                 help="run directories or checkpoint files")),
         *VIZ_INPUT,
         (("--layer",), dict(type=int, default=None, help="layer to compare, counted from 0 "
                             "(default: each model's last)")),
         (("--out",), dict(required=True, help="output directory (required)"))],
    ),
    "curves": (
        "training loss and validation BPC of one or more runs",
        ["minisynth curves runs/default --out curves.png",
         "minisynth curves runs/dense runs/random --out figures --format svg"],
        [(("runs",), dict(nargs="+", metavar="RUN", help="run directories or metrics.jsonl files")),
         (("--out",), dict(required=True, help="image file (.png/.svg/.pdf) or directory, which "
                           "gets curves.<format> (required)")),
         (("--format",), dict(choices=("png", "svg", "pdf"), default=None,
                              help="image format when --out is a directory (default: png)"))],
    ),
    "export": (
        "write a checkpoint as model.safetensors + config.json (for PyTorch)",
        ["minisynth export --checkpoint runs/default --out exported/default",
         "minisynth export --checkpoint runs/random/checkpoint.npz --out exp/random --force"],
        [CHECKPOINT,
         (("--out",), dict(required=True, help="directory for model.safetensors (float32) and "
                           "config.json (required)")),
         (("--force",), dict(action="store_true", help="replace an earlier export in --out "
                             "(default: refuse)"))],
    ),
    "import": (
        "turn a model.safetensors + config.json directory into a checkpoint",
        ["minisynth import exported/default --out runs/imported",
         "minisynth import trained_in_pytorch --out runs/from_gpu --force"],
        [(("source",), dict(help="directory written by `minisynth export` or "
                            "SynthesizerTorch.save_pretrained")),
         (("--out",), dict(required=True, help="run directory for checkpoint.npz, read by eval, "
                           "sample, plot, compare (required)")),
         (("--force",), dict(action="store_true", help="replace a checkpoint already in --out "
                             "(default: refuse)")),
         (("--allow-nonfinite",), dict(action="store_true", help="import weights that hold NaN "
                                       "or infinite values (default: refuse them)"))],
    ),
}  # fmt: skip
GROUPS = {  # a command whose actions are the commands "data ..."
    "data": (
        "manage datasets",
        ["minisynth data fetch", "minisynth data fetch --dest ~/data/enwik8"],
    ),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example lines of each epilog as written."""


def _examples(*lines):
    return "examples:\n" + "\n".join("  " + line for line in lines)


def _subcommand(sub, name, help, examples):
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=_examples(*examples),
        formatter_class=HelpFormatter,
    )


def _add_arguments(parser, arguments):
    for argument in arguments:
        if argument == "CONFIG":
            _add_arguments(parser, config_flags())
        elif isinstance(argument, list):  # a mutually exclusive group
            _add_arguments(parser.add_mutually_exclusive_group(), argument)
        else:
            flags, options = argument
            parser.add_argument(*flags, **options)


def build_parser():
    """The ``minisynth`` parser; each command's namespace has ``command`` set to its name."""
    parser = argparse.ArgumentParser(
        prog="minisynth",
        description="Synthesizer attention (Tay et al., 2020) from scratch in NumPy and Numba.",
        epilog=_examples(
            "minisynth train                      # the default Dense model, a few minutes",
            "minisynth train --help               # every option of a command",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"minisynth {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = {}
    for name, (help, examples, arguments) in COMMANDS.items():
        group, _, action = name.rpartition(" ")
        if group and group not in groups:  # "data fetch": the action of the command "data"
            outer = _subcommand(top, group, *GROUPS[group])
            groups[group] = outer.add_subparsers(dest="action", metavar="ACTION", required=True)
        command = _subcommand(groups[group] if group else top, action, help, examples)
        _add_arguments(command, arguments)
        command.set_defaults(run=name, typed=set())
    return parser
