"""``tfkit lr-find``: the learning-rate range test on the quickstart model and digits data.

Runs :func:`tfkit.tuning.lr_find.lr_find` on the quickstart model
(:func:`tfkit.cli.quickstart_model.build_model`, without recomputation, the
model ``examples/quickstart.py`` trains) on scikit-learn's offline digits data, writes the
curve to a PNG and prints both suggestions. Exit status 0 when a rate is
suggested, 1 when the sweep found none (the reason is printed).
"""

from __future__ import annotations

import argparse
import pathlib


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lr-find",
        help="learning-rate range test on the quickstart model (digits); writes a PNG",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--min-lr", type=float, default=1e-7, help="first rate (default 1e-7)")
    p.add_argument("--max-lr", type=float, default=10.0, help="last rate (default 10)")
    p.add_argument("--steps", type=int, default=100, help="optimizer updates (default 100)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--output",
        type=pathlib.Path,
        default=pathlib.Path("runs/lr_find/lr_find.png"),
        help="PNG to write (default runs/lr_find/lr_find.png)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import keras

    from tfkit.cli.quickstart_model import build_model, digits
    from tfkit.tuning.lr_find import lr_find

    keras.utils.set_random_seed(args.seed)
    x, y = digits(args.seed)
    model = build_model(recompute=False)
    model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    result = lr_find(
        model,
        (x, y),
        min_lr=args.min_lr,
        max_lr=args.max_lr,
        steps=args.steps,
        batch_size=args.batch_size,
        verbose=0 if args.quiet else 1,
        seed=args.seed,
    )
    path = result.plot(args.output)
    print(f"lr-find: {len(result.lrs)} updates, {result.reason}")
    for name, lr in result.suggestions.items():
        print(f"suggested learning rate ({name}): {'none' if lr is None else f'{lr:.3g}'}")
    print(f"plot: {path}")
    return 0 if result.suggestion is not None else 1
