"""The ``minisynth`` console command.

Each sub-command is a function ``cmd_<name>(args) -> int``. Errors a user can
fix (bad sizes, missing files, unknown kinds) are raised as ``ValueError``,
``TypeError`` or ``OSError`` and reported as one line on stderr with exit
status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .backend import BACKENDS

DEFAULT_ATTENTION = "dense"


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


_positive_int = _number(int, "a positive integer", lambda v: v > 0)
_nonneg_int = _number(int, "a non-negative integer", lambda v: v >= 0)
_positive_float = _number(float, "a positive finite number", lambda v: 0 < v < float("inf"))
_nonneg_float = _number(float, "a non-negative finite number", lambda v: 0 <= v < float("inf"))


def _options(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"k\": 8}}', got {text!r}"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


class _Given(argparse.Action):
    """Store the value and remember that the flag was typed (a resumed run refuses typed
    flags that differ from the saved run, but takes the saved value of untyped ones)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def _flag_name(field):
    return "--" + field.replace("_", "-")


# ------------------------------------------------------------------------ commands
def cmd_train(args):
    import dataclasses

    from .data import canonical_data_spec
    from .model import ModelConfig
    from .train import RunConflict, TrainConfig, resumed_schedule, saved_run, train

    # the fields of both configs that are flags (vocab_size is fixed: bytes)
    model_fields = [f.name for f in dataclasses.fields(ModelConfig) if hasattr(args, f.name)]
    train_fields = [f.name for f in dataclasses.fields(TrainConfig)]
    given = getattr(args, "given", set())
    model_values = {k: getattr(args, k) for k in model_fields}
    train_values = {k: getattr(args, k) for k in train_fields}
    train_values["data"] = canonical_data_spec(train_values["data"])
    if args.resume:  # the saved run, with only the flags that were typed on top
        saved_model, saved_train, _ = saved_run(args.out)
        model_values = {
            **dataclasses.asdict(saved_model),
            **{k: v for k, v in model_values.items() if k in given},
        }
        if saved_train is not None:  # None: a checkpoint older than saved settings
            steps = train_values["steps"] if "steps" in given else saved_train.steps
            saved_train = resumed_schedule(saved_train, steps)
            train_values = {
                **dataclasses.asdict(saved_train),
                **{k: v for k, v in train_values.items() if k in given},
            }
    else:  # (on resume, train() refuses any typed flag that differs from the saved run)
        # untyped defaults give way to typed flags (documented in --help)
        if "min_lr" not in given:
            train_values["min_lr"] = min(train_values["min_lr"], train_values["lr"])
        if "warmup_steps" not in given:
            train_values["warmup_steps"] = min(train_values["warmup_steps"], train_values["steps"])
        if train_values["min_lr"] > train_values["lr"]:
            raise ValueError(
                f"--min-lr {train_values['min_lr']:g} is above --lr {train_values['lr']:g}; "
                "the cosine schedule decays from --lr down to --min-lr"
            )
        if train_values["warmup_steps"] > train_values["steps"]:
            raise ValueError(
                f"--warmup-steps {train_values['warmup_steps']} is more than --steps "
                f"{train_values['steps']}; the warmup must fit in the run"
            )
    try:
        result = train(
            ModelConfig(**model_values),
            TrainConfig(**train_values),
            args.out,
            resume=args.resume,
            force=args.force,
            progress=not args.quiet,
            backend=args.backend,
        )
    except RunConflict as err:
        if not err.differences:
            raise
        raise ValueError(  # the same refusal, in the command line's words
            f"--resume continues the run saved in {args.out}, but "
            + "; ".join(
                f"{_flag_name(k)} was {_show(a)} there and is {_show(b)} here"
                for k, a, b in err.differences
            )
            + " (leave those flags out to continue it, or start a new run with another --out)"
        ) from None
    print(
        f"final validation BPC: {result['val_bpc']:.4f} after {result['steps']} steps "
        f"({result['wall_time_s']:.1f} s); for scale, on the same split a uniform guess scores "
        f"{result['uniform_bpc']:.2f} and the byte frequencies of the train split "
        f"{result['unigram_bpc']:.2f}"
    )
    print(f"checkpoint: {result['checkpoint']}  metrics: {result['metrics']}")
    if "sample" in result:
        print("sample (after the first 64 validation bytes):")
        print(result["sample"])
    return 130 if result["interrupted"] else 0


def _show(value):
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)


def cmd_eval(args):
    from .checkpoint import load_checkpoint
    from .data import load_data
    from .train import evaluate

    model, _ = load_checkpoint(args.checkpoint, backend=args.backend)
    splits, description = load_data(args.data)
    bpc = evaluate(model, splits[args.split], batch_size=args.batch_size)
    print(f"{args.split} BPC on {description}: {bpc:.4f}")
    return 0


def cmd_sample(args):
    import numpy as np

    from .checkpoint import load_checkpoint
    from .train import decode

    model, _ = load_checkpoint(args.checkpoint, backend=args.backend)
    prompt = np.frombuffer(args.prompt.encode("utf-8", errors="surrogateescape"), dtype=np.uint8)
    if prompt.size == 0:
        raise ValueError("--prompt must not be empty")
    tokens = model.generate(
        prompt.astype(np.int64),
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        overflow=args.overflow,
    )
    # decode prompt and continuation together: a multi-byte character may straddle them,
    # and non-UTF-8 prompt bytes (surrogate-escaped by argv) print as replacement characters
    sys.stdout.write(decode(np.concatenate([prompt, tokens])) + "\n")
    return 0


def cmd_data_fetch(args):
    from .data import OFFICIAL_URL, fetch_enwik8

    path = fetch_enwik8(args.url or OFFICIAL_URL, args.dest, progress=not args.quiet)
    print(f"enwik8 is ready at {path}")
    return 0


def _viz_input(args, checkpoints):
    """The input bytes of plot/compare: --text, or the start of a data split."""
    from .data import load_data
    from .viz import encode_text

    if args.text is not None:
        if args.length is not None:
            raise ValueError("--length applies to --from-split only; shorten the --text instead")
        return encode_text(args.text), "--text"
    split = args.from_split or "val"
    length = args.length
    if length is None:  # the longest input every model can take whole
        from .viz import load_model

        length = min(load_model(c)[0].config.max_len for c in checkpoints)
    splits, description = load_data(args.data)
    tokens = splits[split][:length].astype("int64")
    if tokens.size == 0:
        raise ValueError(f"the {split} split of {description} is empty")
    return tokens, f"first {tokens.size} bytes of the {split} split of {description}"


def cmd_plot(args):
    from .viz import plot_checkpoint

    tokens, source = _viz_input(args, [args.checkpoint])
    out = args.out
    if out is None:  # next to the run's checkpoint and metrics
        from pathlib import Path

        ckpt = Path(args.checkpoint)
        out = (ckpt if ckpt.is_dir() else ckpt.parent) / "plots"
    plot_checkpoint(
        args.checkpoint, tokens, out, fmt=args.format or "png", source=source, scale=args.scale
    )
    return 0


def cmd_compare(args):
    from .viz import compare_checkpoints

    if len(args.checkpoints) < 2:
        raise ValueError("compare needs at least two checkpoints (use `minisynth plot` for one)")
    tokens, source = _viz_input(args, args.checkpoints)
    compare_checkpoints(
        args.checkpoints,
        tokens,
        args.out,
        layer=args.layer,
        fmt=args.format or "png",
        source=source,
        scale=args.scale,
    )
    return 0


def cmd_curves(args):
    from .viz import curves_for_runs

    curves_for_runs(args.runs, args.out, fmt=args.format)
    return 0


def cmd_export(args):
    from .export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, force=args.force)
    print(f"exported {args.checkpoint} to {path} and {path.parent / 'config.json'}")
    return 0


def cmd_import(args):
    from .export import import_pretrained

    path = import_pretrained(args.source, args.out, force=args.force)
    print(f"imported {args.source} into {path}")
    return 0


# -------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the example lines of each epilog as written."""


def _examples(*lines):
    return "examples:\n" + "\n".join("  " + line for line in lines)


def _subcommand(sub, name, help, examples):
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=_examples(*examples),
        formatter_class=_HelpFormatter,
    )


def _add_backend_option(parser):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="numba",
        help="the code that computes the model: numba (the fast path: Numba kernels, the "
        "batch split over the cores) or numpy (the reference, as written in minisynth.layers; "
        "slower, the same numbers to rounding) (default: %(default)s)",
    )


def _add_train_options(tr):
    def option(flag, help, **kw):
        tr.add_argument(flag, action=_Given, help=help, **kw)

    option(
        "--attention",
        default=DEFAULT_ATTENTION,
        help="attention kind: vanilla, dense, random, random_fixed, factorized_dense, "
        "factorized_random, or a mixture joined by + such as dense+vanilla "
        "(default: %(default)s)",
    )
    option(
        "--attention-options",
        type=_options,
        default={},
        help="options of the kind as a JSON object, e.g. '{\"k\": 8}' (factorized_random's "
        "rank) or '{\"factors\": [8, 16]}' (factorized_dense, whose product must be "
        "--max-len) (default: {}, the kind's own defaults)",
    )
    option(
        "--d-model", type=_positive_int, default=128, help="model width C (default: %(default)s)"
    )
    option(
        "--n-heads",
        type=_positive_int,
        default=4,
        help="attention heads H; must divide --d-model (default: %(default)s)",
    )
    option(
        "--n-layers",
        type=_positive_int,
        default=2,
        help="Transformer blocks (default: %(default)s)",
    )
    option(
        "--max-len",
        type=_positive_int,
        default=128,
        help="context length L = T, in bytes; Dense and Random are tied to it "
        "(default: %(default)s)",
    )
    option(
        "--batch-size",
        type=_positive_int,
        default=32,
        help="windows of --max-len bytes per step (default: %(default)s)",
    )
    option(
        "--steps",
        type=_positive_int,
        default=1500,
        help="total optimisation steps of the run; the only flag --resume lets you change "
        "(default: %(default)s)",
    )
    option(
        "--lr",
        type=_positive_float,
        default=3e-3,
        help="peak learning rate of AdamW, reached after the warmup (default: %(default)s)",
    )
    option(
        "--min-lr",
        type=_nonneg_float,
        default=3e-4,
        help="learning rate at the end of the cosine decay; must not exceed --lr "
        "(default: %(default)s, or --lr if that is lower)",
    )
    option(
        "--warmup-steps",
        type=_nonneg_int,
        default=100,
        help="steps of linear warmup from 0 to --lr; must not exceed --steps "
        "(default: %(default)s, or --steps if the run is shorter)",
    )
    option(
        "--weight-decay",
        type=_nonneg_float,
        default=0.1,
        help="AdamW's decoupled weight decay, applied to weight matrices only (not to "
        "biases, gains, the embeddings, the mixture weights alpha or the synthetic logits "
        "R, R1, R2) (default: %(default)s)",
    )
    option(
        "--grad-clip",
        type=_nonneg_float,
        default=1.0,
        help="clip the global L2 norm of the gradients to this; 0 turns clipping off "
        "(default: %(default)s)",
    )
    option(
        "--synthetic-lr-scale",
        type=_positive_float,
        default=1.0,
        help="multiplies the learning rate of the Random kinds' synthetic logits R, R1, R2, "
        "which Adam otherwise moves by at most about --lr per step (default: %(default)s)",
    )
    option(
        "--eval-interval",
        type=_positive_int,
        default=250,
        help="steps between validation BPC evaluations (over the whole validation split) "
        "and checkpoints; the last step always evaluates (default: %(default)s)",
    )
    option(
        "--log-interval",
        type=_positive_int,
        default=10,
        help="steps between lines of metrics.jsonl (default: %(default)s)",
    )
    option(
        "--sample-length",
        type=_nonneg_int,
        default=200,
        help="bytes of text generated at the end of the run; 0 for none (default: %(default)s)",
    )
    option(
        "--data",
        default="bundled",
        help="bundled (the 1 MiB enwik8 prefix shipped with minisynth), enwik8 (after "
        "'minisynth data fetch') or a path to any file, split 90/5/5 into train/val/test "
        "(default: %(default)s)",
    )
    option(
        "--seed",
        type=_nonneg_int,
        default=0,
        help="seed of the initial weights, the batches and the end sample (default: %(default)s)",
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minisynth",
        description="Synthesizer attention (Tay et al., 2020) from scratch in NumPy and Numba.",
        epilog=_examples(
            "minisynth train                      # the default Dense model, a few minutes",
            "minisynth train --help               # every option of a command",
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"minisynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tr = _subcommand(
        sub,
        "train",
        "train a character-level Synthesizer LM on enwik8",
        [
            "minisynth train --attention random --out runs/random",
            "minisynth train --out runs/random --resume --steps 3000   # continue, or extend",
            "minisynth train --data notes.txt --max-len 64 --out runs/notes --force",
        ],
    )
    _add_train_options(tr)
    tr.add_argument(
        "--out",
        default="runs/default",
        help="run directory: checkpoint.npz and metrics.jsonl go here (default: %(default)s)",
    )
    again = tr.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with its saved model, data and schedule; only "
        "--steps may change (default: off)",
    )
    again.add_argument(
        "--force",
        action="store_true",
        help="start over even if --out holds a run, deleting its checkpoint and metrics "
        "(default: off: such a run is refused)",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    _add_backend_option(tr)
    tr.set_defaults(handler=cmd_train, given=set())

    ev = _subcommand(
        sub,
        "eval",
        "bits per character of a checkpoint on a split",
        [
            "minisynth eval --checkpoint runs/default",
            "minisynth eval --checkpoint runs/default/checkpoint.npz --split test",
        ],
    )
    ev.add_argument(
        "--checkpoint",
        required=True,
        help="run directory or checkpoint .npz file (required)",
    )
    ev.add_argument(
        "--data",
        default="bundled",
        help="bundled, enwik8 or a file path, as for train (default: %(default)s)",
    )
    ev.add_argument(
        "--split", choices=("val", "test"), default="val", help="split (default: %(default)s)"
    )
    ev.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        help="windows of max_len bytes per forward pass; changes speed, not the result "
        "(default: %(default)s)",
    )
    _add_backend_option(ev)
    ev.set_defaults(handler=cmd_eval)

    sa = _subcommand(
        sub,
        "sample",
        "generate text from a checkpoint",
        [
            "minisynth sample --checkpoint runs/default",
            'minisynth sample --checkpoint runs/default --prompt "The " --length 300 --top-k 10',
        ],
    )
    sa.add_argument(
        "--checkpoint",
        required=True,
        help="run directory or checkpoint .npz file (required)",
    )
    sa.add_argument(
        "--prompt",
        default="\n",
        help="text to continue, encoded as UTF-8 bytes (default: a newline)",
    )
    sa.add_argument(
        "--length", type=_nonneg_int, default=200, help="bytes to generate (default: %(default)s)"
    )
    sa.add_argument(
        "--temperature",
        type=_positive_float,
        default=1.0,
        help="divides the logits before sampling; below 1 is more conservative "
        "(default: %(default)s)",
    )
    sa.add_argument(
        "--top-k",
        type=_positive_int,
        default=None,
        help="sample among the k most likely bytes only (default: all 256)",
    )
    sa.add_argument(
        "--seed", type=_nonneg_int, default=0, help="sampling seed (default: %(default)s)"
    )
    sa.add_argument(
        "--overflow",
        choices=("refill", "slide"),  # model.OVERFLOW_POLICIES, without importing numpy here
        default="refill",
        help="when prompt and text outgrow max_len: 'refill' keeps the last max_len/2 bytes "
        "and decodes on (fast); 'slide' re-runs the last max_len bytes for every byte "
        "(always a full window, slow) (default: %(default)s)",
    )
    _add_backend_option(sa)
    sa.set_defaults(handler=cmd_sample)

    da = _subcommand(
        sub,
        "data",
        "manage datasets",
        ["minisynth data fetch", "minisynth data fetch --dest ~/data/enwik8"],
    )
    da_sub = da.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fe = _subcommand(
        da_sub,
        "fetch",
        "download, verify and cache the full enwik8 (36 MB zip, 100 MB unpacked)",
        [
            "minisynth data fetch",
            "minisynth data fetch --url http://mirror.example/enwik8.zip",
        ],
    )
    fe.add_argument(
        "--dest",
        default=None,
        help="directory to keep it in (default: $MINISYNTH_DATA, else the user cache directory)",
    )
    fe.add_argument(
        "--url",
        default=None,
        help="mirror URL of enwik8.zip; the checksums still apply (default: the official "
        "mattmahoney.net address)",
    )
    fe.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    fe.set_defaults(handler=cmd_data_fetch)

    def viz_input_args(p):
        src = p.add_mutually_exclusive_group()
        src.add_argument(
            "--text", help="input text, encoded as UTF-8 bytes (default: use --from-split)"
        )
        src.add_argument(
            "--from-split",
            choices=("train", "val", "test"),
            help="take the input from the start of this split of --data (default: val)",
        )
        p.add_argument(
            "--length",
            type=_positive_int,
            default=None,
            help="bytes taken with --from-split (default: the smallest max_len of the models)",
        )
        p.add_argument(
            "--data", default="bundled", help="data for --from-split (default: %(default)s)"
        )
        p.add_argument(
            "--format",
            choices=("png", "svg", "pdf"),
            default=None,
            help="image format (default: png)",
        )
        p.add_argument(
            "--scale",
            choices=("sqrt", "linear"),
            default="sqrt",
            help="colour scale of the maps; sqrt shows spread-out attention (default: %(default)s)",
        )

    pl = _subcommand(
        sub,
        "plot",
        "draw every layer and head's attention on one input",
        [
            'minisynth plot --checkpoint runs/default --text "<title>Anarchism</title>"',
            "minisynth plot --checkpoint runs/default --from-split test --length 64 --format svg",
        ],
    )
    pl.add_argument(
        "--checkpoint", required=True, help="run directory or checkpoint .npz file (required)"
    )
    viz_input_args(pl)
    pl.add_argument(
        "--out",
        default=None,
        help="output directory (default: plots/ next to the checkpoint)",
    )
    pl.set_defaults(handler=cmd_plot)

    co = _subcommand(
        sub,
        "compare",
        "the same input through several models, side by side",
        [
            'minisynth compare runs/default runs/vanilla --text "The quick brown fox" --out cmp',
            "minisynth compare runs/dense runs/random runs/vanilla --layer 0 --out cmp",
        ],
    )
    co.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT", help="run directories or checkpoint files"
    )
    viz_input_args(co)
    co.add_argument(
        "--layer",
        type=int,
        default=None,
        help="layer to compare, counted from 0 (default: each model's last)",
    )
    co.add_argument("--out", required=True, help="output directory (required)")
    co.set_defaults(handler=cmd_compare)

    cu = _subcommand(
        sub,
        "curves",
        "training loss and validation BPC of one or more runs",
        [
            "minisynth curves runs/default --out curves.png",
            "minisynth curves runs/dense runs/random --out figures --format svg",
        ],
    )
    cu.add_argument("runs", nargs="+", metavar="RUN", help="run directories or metrics.jsonl files")
    cu.add_argument(
        "--out",
        required=True,
        help="image file (.png/.svg/.pdf) or directory, which gets curves.<format> (required)",
    )
    cu.add_argument(
        "--format",
        choices=("png", "svg", "pdf"),
        default=None,
        help="image format when --out is a directory (default: png)",
    )
    cu.set_defaults(handler=cmd_curves)

    ex = _subcommand(
        sub,
        "export",
        "write a checkpoint as model.safetensors + config.json (for PyTorch)",
        [
            "minisynth export --checkpoint runs/default --out exported/default",
            "minisynth export --checkpoint runs/random/checkpoint.npz --out exp/random --force",
        ],
    )
    ex.add_argument(
        "--checkpoint", required=True, help="run directory or checkpoint .npz file (required)"
    )
    ex.add_argument(
        "--out",
        required=True,
        help="directory for model.safetensors (float32) and config.json (required)",
    )
    ex.add_argument(
        "--force", action="store_true", help="replace an earlier export in --out (default: refuse)"
    )
    ex.set_defaults(handler=cmd_export)

    im = _subcommand(
        sub,
        "import",
        "turn a model.safetensors + config.json directory into a checkpoint",
        [
            "minisynth import exported/default --out runs/imported",
            "minisynth import trained_in_pytorch --out runs/from_gpu --force",
        ],
    )
    im.add_argument(
        "source",
        help="directory written by `minisynth export` or SynthesizerTorch.save_pretrained",
    )
    im.add_argument(
        "--out",
        required=True,
        help="run directory for checkpoint.npz, read by eval, sample, plot, compare (required)",
    )
    im.add_argument(
        "--force",
        action="store_true",
        help="replace a checkpoint already in --out (default: refuse)",
    )
    im.set_defaults(handler=cmd_import)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .fast.allocator import reuse_freed_memory

    reuse_freed_memory()  # process-wide, so here and not on import; see minisynth.fast.allocator
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"minisynth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minisynth {args.command}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:  # e.g. training diverged
        print(f"minisynth {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
