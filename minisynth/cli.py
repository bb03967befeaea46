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


# ------------------------------------------------------------------------ commands
def cmd_train(args):
    from .model import ModelConfig
    from .train import TrainConfig, train

    model_config = ModelConfig(
        d_model=args.d_model,
        n_heads=args.n_heads,
        n_layers=args.n_layers,
        max_len=args.max_len,
        attention=args.attention,
        attention_options=args.attention_options,
    )
    train_config = TrainConfig(
        data=args.data,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        min_lr=min(args.min_lr, args.lr),
        warmup_steps=min(args.warmup_steps, args.steps),
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_interval=args.eval_interval,
        log_interval=args.log_interval,
        seed=args.seed,
        sample_length=args.sample_length,
    )
    result = train(
        model_config, train_config, args.out, resume=args.resume, progress=not args.quiet
    )
    print(
        f"final validation BPC: {result['val_bpc']:.4f} after {result['steps']} steps "
        f"({result['wall_time_s']:.0f} s)"
    )
    print(f"checkpoint: {result['checkpoint']}  metrics: {result['metrics']}")
    if "sample" in result:
        print("sample (after the first 64 validation bytes):")
        print(result["sample"])
    return 130 if result["interrupted"] else 0


def cmd_eval(args):
    from .checkpoint import load_checkpoint
    from .data import load_data
    from .train import evaluate

    model, _ = load_checkpoint(args.checkpoint)
    splits, description = load_data(args.data)
    bpc = evaluate(model, splits[args.split], batch_size=args.batch_size)
    print(f"{args.split} BPC on {description}: {bpc:.4f}")
    return 0


def cmd_sample(args):
    import numpy as np

    from .checkpoint import load_checkpoint
    from .train import decode

    model, _ = load_checkpoint(args.checkpoint)
    prompt = np.frombuffer(args.prompt.encode("utf-8", errors="surrogateescape"), dtype=np.uint8)
    if prompt.size == 0:
        raise ValueError("--prompt must not be empty")
    tokens = model.generate(
        prompt.astype(np.int64),
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
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


# -------------------------------------------------------------------------- parser
def build_parser():
    parser = argparse.ArgumentParser(
        prog="minisynth",
        description="Synthesizer attention (Tay et al., 2020) from scratch in NumPy and Numba.",
    )
    parser.add_argument("--version", action="version", version=f"minisynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tr = sub.add_parser("train", help="train a character-level Synthesizer LM on enwik8")
    tr.add_argument(
        "--attention",
        default=DEFAULT_ATTENTION,
        help="attention kind: vanilla, dense, random, random_fixed, "
        "factorized_dense, factorized_random, or a mixture such as "
        "dense+vanilla (default: %(default)s)",
    )
    tr.add_argument(
        "--attention-options",
        type=_options,
        default={},
        help="JSON options, e.g. '{\"k\": 8}' or '{\"factors\": [8, 16]}'",
    )
    tr.add_argument("--d-model", type=_positive_int, default=128)
    tr.add_argument("--n-heads", type=_positive_int, default=4)
    tr.add_argument("--n-layers", type=_positive_int, default=2)
    tr.add_argument("--max-len", type=_positive_int, default=128)
    tr.add_argument("--batch-size", type=_positive_int, default=32)
    tr.add_argument("--steps", type=_positive_int, default=1500)
    tr.add_argument("--lr", type=_positive_float, default=3e-3)
    tr.add_argument("--min-lr", type=float, default=3e-4)
    tr.add_argument("--warmup-steps", type=_nonneg_int, default=100)
    tr.add_argument("--weight-decay", type=float, default=0.1)
    tr.add_argument("--grad-clip", type=float, default=1.0)
    tr.add_argument("--eval-interval", type=_positive_int, default=250)
    tr.add_argument("--log-interval", type=_positive_int, default=10)
    tr.add_argument("--sample-length", type=_nonneg_int, default=200)
    tr.add_argument(
        "--data",
        default="bundled",
        help="bundled (the 1 MiB prefix shipped with minisynth), enwik8 (after "
        "'minisynth data fetch') or a path to any file (default: %(default)s)",
    )
    tr.add_argument("--out", default="runs/default", help="output directory (default: %(default)s)")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    tr.add_argument("--seed", type=_nonneg_int, default=0)
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(handler=cmd_train)

    ev = sub.add_parser("eval", help="bits per character of a checkpoint on a split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", default="bundled")
    ev.add_argument("--split", choices=("val", "test"), default="val")
    ev.add_argument("--batch-size", type=_positive_int, default=32)
    ev.set_defaults(handler=cmd_eval)

    sa = sub.add_parser("sample", help="generate text from a checkpoint")
    sa.add_argument("--checkpoint", required=True)
    sa.add_argument("--prompt", default="\n")
    sa.add_argument("--length", type=_nonneg_int, default=200)
    sa.add_argument("--temperature", type=_positive_float, default=1.0)
    sa.add_argument("--top-k", type=_positive_int, default=None)
    sa.add_argument("--seed", type=_nonneg_int, default=0)
    sa.set_defaults(handler=cmd_sample)

    da = sub.add_parser("data", help="manage datasets")
    da_sub = da.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fe = da_sub.add_parser("fetch", help="download, verify and cache the full enwik8")
    fe.add_argument(
        "--dest",
        default=None,
        help="directory (default: $MINISYNTH_DATA or the user cache directory)",
    )
    fe.add_argument("--url", default=None, help="mirror URL of enwik8.zip (checksums still apply)")
    fe.add_argument("--quiet", action="store_true")
    fe.set_defaults(handler=cmd_data_fetch)

    def viz_input_args(p):
        src = p.add_mutually_exclusive_group()
        src.add_argument("--text", help="input text (encoded as UTF-8 bytes)")
        src.add_argument(
            "--from-split",
            choices=("train", "val", "test"),
            help="take the input from the start of this split of --data (the default: val)",
        )
        p.add_argument(
            "--length",
            type=_positive_int,
            default=None,
            help="bytes taken with --from-split (default: the model's max_len)",
        )
        p.add_argument("--data", default="bundled", help="data for --from-split (default: bundled)")
        p.add_argument("--format", choices=("png", "svg", "pdf"), default=None, help="default png")
        p.add_argument(
            "--scale",
            choices=("sqrt", "linear"),
            default="sqrt",
            help="colour scale of the maps; sqrt shows spread-out attention (default: sqrt)",
        )

    pl = sub.add_parser("plot", help="draw every layer and head's attention on one input")
    pl.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    viz_input_args(pl)
    pl.add_argument(
        "--out", default=None, help="output directory (default: next to the checkpoint, plots/)"
    )
    pl.set_defaults(handler=cmd_plot)

    co = sub.add_parser("compare", help="the same input through several models, side by side")
    co.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files or run directories"
    )
    viz_input_args(co)
    co.add_argument(
        "--layer", type=int, default=None, help="layer to compare (default: each model's last)"
    )
    co.add_argument("--out", required=True, help="output directory")
    co.set_defaults(handler=cmd_compare)

    cu = sub.add_parser("curves", help="training loss and validation BPC of one or more runs")
    cu.add_argument("runs", nargs="+", metavar="RUN", help="run directory or metrics.jsonl file")
    cu.add_argument(
        "--out", required=True, help="image file (.png/.svg/.pdf) or directory (gets curves.png)"
    )
    cu.add_argument("--format", choices=("png", "svg", "pdf"), default=None)
    cu.set_defaults(handler=cmd_curves)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .allocator import reuse_freed_memory

    reuse_freed_memory()  # process-wide, so here and not on import; see minisynth.allocator
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
