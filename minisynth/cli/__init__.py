"""The ``minisynth`` console command.

Each sub-command is a function ``cmd_<name>(args) -> int``; their arguments are
data in :mod:`minisynth.cli.parser`. Errors a user can fix (bad sizes, missing
files, unknown kinds) are raised as ``ValueError``, ``TypeError`` or ``OSError``
and reported as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import json
import sys

from .parser import CONFIG_FLAGS, build_parser, flag_name

__all__ = ["build_parser", "main"]


# ------------------------------------------------------------------------ commands
def cmd_train(args):
    from ..data import canonical_data_spec
    from ..run_folder import check_not_in_use
    from ..train import RunConflict, resumed_settings, train

    check_not_in_use(args.out)  # before the saved run is read: it may be mid-write
    values = {name: getattr(args, name) for name in CONFIG_FLAGS}
    values["data"] = canonical_data_spec(values["data"])
    if args.resume:  # the saved run, with only the flags that were typed on top
        model_config, train_config = resumed_settings(args.out, {k: values[k] for k in args.typed})
    else:  # (on resume, train() refuses any typed flag that differs from the saved run)
        model_config, train_config = _fresh_settings(values, args.typed)
    try:
        result = train(
            model_config,
            train_config,
            args.out,
            resume=args.resume,
            force=args.force,
            progress=not args.quiet,
            backend=args.backend,
            engine=args.engine,
            device=args.device,
            bf16=args.bf16,
            compile=args.compile,
            tiles=args.tiles,
        )
    except RunConflict as err:
        if not err.differences:
            raise
        raise ValueError(  # the same refusal, in the command line's words
            f"--resume continues the run saved in {args.out}, but "
            + "; ".join(
                f"{flag_name(k)} was {_as_typed(a)} there and is {_as_typed(b)} here"
                for k, a, b in err.differences
            )
            + " (leave those flags out to continue it, or start a new run with another --out)"
        ) from None
    if not result["primary"]:  # another process of a torchrun group: process 0 reports
        return 130 if result["interrupted"] else 0
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


def _fresh_settings(values, typed):
    """(ModelConfig, TrainConfig) of a new run from the flags' values: the untyped
    defaults of --min-lr and --warmup-steps give way to typed --lr and --steps."""
    import dataclasses

    from ..model import ModelConfig
    from ..train import new_run_settings

    if "min_lr" in typed and values["min_lr"] > values["lr"]:
        raise ValueError(
            f"--min-lr {values['min_lr']:g} is above --lr {values['lr']:g}; "
            "the cosine schedule decays from --lr down to --min-lr"
        )
    if "warmup_steps" in typed and values["warmup_steps"] > values["steps"]:
        raise ValueError(
            f"--warmup-steps {values['warmup_steps']} is more than --steps "
            f"{values['steps']}; the warmup must fit in the run"
        )
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model_config = ModelConfig(**{k: v for k, v in values.items() if k in model_fields})
    given = {
        k: v for k, v in values.items() if k not in model_fields and (k in typed or k == "data")
    }
    return model_config, new_run_settings(given)


def _check_bytes_model(model, checkpoint):
    from ..export import BYTE_VOCAB

    if model.config.vocab_size != BYTE_VOCAB:
        raise ValueError(
            f"{checkpoint} holds a model of vocab_size {model.config.vocab_size}; minisynth "
            f"reads and writes bytes, so it must be {BYTE_VOCAB}"
        )


def _as_typed(value):
    """A saved or given setting as one would type it on the command line."""
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)


def cmd_eval(args):
    from ..checkpoint import load_checkpoint
    from ..data import load_data
    from ..train import evaluate

    model, _ = load_checkpoint(args.checkpoint, backend=args.backend, tiles=args.tiles)
    _check_bytes_model(model, args.checkpoint)
    splits, description = load_data(args.data)
    bpc = evaluate(model, splits[args.split], batch_size=args.batch_size)
    print(f"{args.split} BPC on {description}: {bpc:.4f}")
    return 0


def cmd_sample(args):
    import numpy as np

    from ..checkpoint import load_checkpoint
    from ..data import decode, encode_text

    model, _ = load_checkpoint(args.checkpoint, backend=args.backend)
    _check_bytes_model(model, args.checkpoint)
    if not args.prompt:
        raise ValueError("--prompt must not be empty")
    prompt = encode_text(args.prompt)  # (T,) bytes
    tokens = model.generate(
        prompt,
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
    from ..data import OFFICIAL_URL, fetch_enwik8

    path = fetch_enwik8(args.url or OFFICIAL_URL, args.dest, progress=not args.quiet)
    print(f"enwik8 is ready at {path}")
    return 0


def _viz_input(args, checkpoints):
    """The input bytes of plot/compare: --text, or the start of a data split."""
    from ..data import encode_text, load_data

    if args.text is not None:
        if args.length is not None:
            raise ValueError("--length applies to --from-split only; shorten the --text instead")
        return encode_text(args.text), "--text"
    split = args.from_split or "val"
    length = args.length
    if length is None:  # the longest input every model can take whole
        from ..viz import load_model

        length = min(load_model(c)[0].config.max_len for c in checkpoints)
    splits, description = load_data(args.data)
    tokens = splits[split][:length].astype("int64")
    if tokens.size == 0:
        raise ValueError(f"the {split} split of {description} is empty")
    return tokens, f"first {tokens.size} bytes of the {split} split of {description}"


def cmd_plot(args):
    from ..viz import plot_checkpoint

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
    from ..viz import compare_checkpoints

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
    from ..viz import curves_for_runs

    curves_for_runs(args.runs, args.out, fmt=args.format)
    return 0


def cmd_export(args):
    from ..export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, force=args.force)
    print(f"exported {args.checkpoint} to {path} and {path.parent / 'config.json'}")
    return 0


def cmd_import(args):
    from ..export import import_pretrained

    path = import_pretrained(
        args.source, args.out, force=args.force, allow_nonfinite=args.allow_nonfinite
    )
    print(f"imported {args.source} into {path}")
    return 0


HANDLERS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "sample": cmd_sample,
    "data fetch": cmd_data_fetch,
    "plot": cmd_plot,
    "compare": cmd_compare,
    "curves": cmd_curves,
    "export": cmd_export,
    "import": cmd_import,
}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from ..fast.allocator import reuse_freed_memory

    reuse_freed_memory()  # process-wide, so here and not on import; see minisynth.fast.allocator
    try:
        return HANDLERS[args.run](args)
    except (ValueError, TypeError, OSError) as err:
        print(f"minisynth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an optional extra that is not installed
        if err.name != "torch":
            raise
        print(f"minisynth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError as err:  # the checks before allocating should make this rare
        detail = f" ({err})" if str(err) else ""
        print(f"minisynth {args.command}: error: out of memory{detail}; lower --batch-size, "
              "--max-len or --d-model, or free memory", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"minisynth {args.command}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:  # e.g. training diverged
        print(f"minisynth {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
