"""``tfkit doctor``: examine a training set-up (the quickstart model, or a saved model and data).

Without ``--model``, examines the model of ``examples/quickstart.py`` on
scikit-learn's offline digits data. With ``--model m.keras --data d.npz``,
loads the compiled model (``safe_mode=True``) and the arrays ``x`` and ``y`` of
the ``.npz``. Prints the report; ``--markdown`` and ``--plots`` also write it.
Exit status 0 when no check reported an error or a warning, 1 otherwise, 2 on
a usage error.
"""

from __future__ import annotations

import argparse
import pathlib

from tfkit.doctor._ids import ALL_CHECKS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="examine a training set-up for common mistakes (quickstart model, or --model/--data)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", type=pathlib.Path, help="a compiled model saved as .keras")
    p.add_argument("--data", type=pathlib.Path, help=".npz with arrays x and y (with --model)")
    p.add_argument(
        "--checks",
        help=f"comma-separated check ids (default: all but learning_rate "
        f"and zero_input); known: {', '.join(ALL_CHECKS)}",
    )
    p.add_argument("--learning-rate", action="store_true", help="also run the lr_find comparison")
    p.add_argument("--baseline", action="store_true", help="also run the zero-input baseline")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--time-budget", type=float, default=30.0, help="seconds per check (default 30)")
    p.add_argument("--markdown", type=pathlib.Path, help="also write the report as Markdown here")
    p.add_argument("--plots", type=pathlib.Path, help="folder for gradient-flow/activation PNGs")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _load(args):
    """The compiled model and its data, from files or the quickstart recipe."""
    if (args.model is None) != (args.data is None):
        raise ValueError("--model and --data go together (a .keras model and an .npz of x, y)")
    import keras
    import numpy as np

    import tfkit  # noqa: F401 - registers tfkit objects before a model is loaded

    if args.model is None:
        from tfkit.cli.quickstart_model import build_model, digits

        keras.utils.set_random_seed(args.seed)
        x, y = digits(args.seed)
        model = build_model(recompute=False)
        model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        return model, (x, y)
    for flag, path, suffix in (("--model", args.model, ".keras"), ("--data", args.data, ".npz")):
        if not path.is_file():
            raise ValueError(f"{flag}: no such file: {path}")
        if path.suffix != suffix:
            raise ValueError(f"{flag} must be a {suffix} file, received {path}")
    with np.load(args.data) as npz:
        missing = [k for k in ("x", "y") if k not in npz.files]
        if missing:
            raise ValueError(f"--data {args.data} lacks array(s) {missing}; it holds {npz.files}")
        x, y = npz["x"], npz["y"]
    model = keras.saving.load_model(args.model, safe_mode=True)
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError(
            f"--model {args.model} was saved without compile(): compile it and save it again"
        )
    return model, (x, y)


def run(args: argparse.Namespace) -> int:
    checks = None
    if args.checks is not None:
        checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    model, data = _load(args)

    from tfkit.doctor import examine

    report = examine(
        model,
        data,
        checks=checks,
        learning_rate=args.learning_rate,
        baseline=args.baseline,
        batch_size=args.batch_size,
        time_budget=args.time_budget,
        seed=args.seed,
    )
    print(report)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.to_markdown())
        print(f"markdown: {args.markdown}")
    if args.plots is not None:
        for path in report.plot(args.plots):
            print(f"plot: {path}")
    return 0 if report.healthy else 1
