"""``tfkit plot``: draw a learning-rate schedule (and OneCycle's momentum) to a PNG.

Options are the schedule's constructor arguments in ``--kebab-case``; lists
are comma-separated::

    tfkit plot onecycle --max-learning-rate 0.1 --total-steps 1000 -o onecycle.png
    tfkit plot piecewise --boundaries 100,200 --values 0.1,0.01,0.001 --steps 300
    tfkit plot cosine --initial-learning-rate 0.1 --decay-steps 900 --warmup-steps 100

``--warmup-steps``/``--warmup-type``/``--warmup-initial-learning-rate`` wrap any
schedule in ``Warmup`` (for ``cosine`` and ``cosine-restarts``,
``--warmup-steps`` is their own argument and needs ``--warmup-target``).

Schedules made of other schedules (``Join``, ``Product``, ``Warmup``, what
``get_scheduler`` returns) are read from a JSON file holding
``keras.saving.serialize_keras_object(schedule)``, loaded with
``safe_mode=True``::

    tfkit plot schedule.json --log-scale

``--log-scale`` draws the rate on a logarithmic axis (steps where the rate is
0 are left out of the curve).

The drawing itself is :func:`tfkit.plot.plot_schedule`. Building the ``tfkit``
parser imports no TensorFlow: the per-schedule options are read from the
schedule's signature only when ``tfkit plot NAME`` runs.
"""

from __future__ import annotations

import argparse
import inspect
import pathlib

from tfkit.cli import ArgumentParser

# CLI name -> class name in tfkit.schedules. Class names are accepted too.
SCHEDULES = {
    "onecycle": "OneCycle",
    "cyclic": "Cyclic",
    "cosine": "CosineDecay",
    "cosine-restarts": "CosineDecayRestarts",
    "linear-cosine": "LinearCosineDecay",
    "exponential": "ExponentialDecay",
    "natural-exp": "NaturalExpDecay",
    "inverse-time": "InverseTimeDecay",
    "polynomial": "PolynomialDecay",
    "piecewise": "PiecewiseConstantDecay",
    "multistep": "MultiStepDecay",
    "constant": "Constant",
    "inverse-sqrt": "InverseSqrtDecay",
    "warmup-stable-decay": "WarmupStableDecay",
    "swa": "SWALR",
}
# Drawn from a JSON file (their arguments are schedules): see the module docstring.
COMPOSITE = ("Join", "Product", "Warmup")
# Constructor arguments that are not options.
_NOT_OPTIONS = {"self", "name", "dtype"}


def register(subparsers) -> None:
    """Add ``tfkit plot NAME [--argument VALUE ...] [-o out.png]``."""
    p = subparsers.add_parser(
        "plot",
        help="draw a learning-rate schedule (and OneCycle's momentum) to a PNG",
        description="Draw a tfkit learning-rate schedule to a PNG. Options are the "
        "schedule's constructor arguments in --kebab-case (lists comma-separated); "
        "see `tfkit plot NAME --help`.",
    )
    p.add_argument(
        "schedule",
        metavar="SCHEDULE",
        help="one of: " + ", ".join(SCHEDULES) + "; or FILE.json with any serialized schedule "
        "(Join, Product, Warmup, get_scheduler's)",
    )
    p.add_argument("options", nargs=argparse.REMAINDER, help="the schedule's arguments")
    p.set_defaults(func=run)


# Option types. argparse names the function in its message ("invalid number
# value: 'abc'"), so each is named for what it accepts.
def number(text: str) -> int | float:
    """An int when the text is one (steps), else a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def number_list(text: str) -> list[int | float]:
    try:
        return [number(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _option_type(annotation: str):
    if "Sequence" in annotation:
        return number_list
    if annotation.startswith("bool"):
        return boolean
    if annotation.startswith("str"):
        return str
    return number


def _schedule_class(class_name: str):
    import tfkit.schedules

    return getattr(tfkit.schedules, class_name)


def _is_json(name: str) -> bool:
    return name.lower().endswith(".json")


def _add_output_options(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--steps", type=int, default=None, help="steps to plot (default: whole shape)")
    p.add_argument("--log-scale", action="store_true", help="logarithmic learning-rate axis")
    default = f"{pathlib.Path(name).stem}.png"
    p.add_argument("-o", "--output", default=None, help=f"PNG path (default {default})")


def schedule_parser(name: str) -> ArgumentParser:
    """The option parser of ``tfkit plot NAME``: the constructor arguments of that schedule.

    ``NAME`` may also be a ``.json`` file with a serialized schedule (any
    schedule, composites included); its parser has the output options only.
    """
    if _is_json(name):
        p = ArgumentParser(
            prog=f"tfkit plot {name}",
            description="Draw the schedule serialized in this JSON file "
            "(keras.saving.serialize_keras_object output; loaded with safe_mode=True).",
        )
        _add_output_options(p, name)
        p.set_defaults(schedule_file=name, cli_name=pathlib.Path(name).stem)
        return p
    if name not in SCHEDULES and name not in SCHEDULES.values():
        hint = f" ({name} takes schedules: save it to JSON)" if name in COMPOSITE else ""
        ArgumentParser(prog="tfkit plot").error(
            f"argument SCHEDULE: invalid choice: {name!r}{hint} (choose from "
            f"{', '.join(SCHEDULES)}, a class name, or FILE.json)"
        )
    class_name = SCHEDULES.get(name, name)
    cls = _schedule_class(class_name)
    summary = (cls.__doc__ or "").strip().splitlines()[0]
    p = ArgumentParser(prog=f"tfkit plot {name}", description=f"{class_name}: {summary}")
    own = inspect.signature(cls.__init__).parameters
    for param in own.values():
        if param.name in _NOT_OPTIONS:
            continue
        required = param.default is inspect.Parameter.empty
        kwargs = dict(
            dest=f"arg_{param.name}",
            type=_option_type(str(param.annotation)),
            required=required,
            metavar=param.name.upper(),
        )
        if not required:
            kwargs["default"] = argparse.SUPPRESS
            kwargs["help"] = f"default {param.default!r}"
        p.add_argument("--" + param.name.replace("_", "-"), **kwargs)
    if "warmup_steps" not in own:
        p.add_argument("--warmup-steps", type=int, default=0, help="wrap in Warmup")
        p.add_argument("--warmup-type", choices=("linear", "constant"), default="linear")
        p.add_argument("--warmup-initial-learning-rate", type=float, default=0.0)
    _add_output_options(p, name)
    p.set_defaults(schedule_class=class_name, cli_name=name)
    return p


def build_schedule(args: argparse.Namespace):
    """The schedule described by parsed ``tfkit plot`` arguments (ValueError on bad values)."""
    from tfkit.schedules import Warmup

    if getattr(args, "schedule_file", None):
        return _load_schedule(args.schedule_file)
    kwargs = {k[4:]: v for k, v in vars(args).items() if k.startswith("arg_")}
    schedule = _schedule_class(args.schedule_class)(**kwargs)
    if getattr(args, "warmup_steps", 0):
        schedule = Warmup(
            schedule,
            args.warmup_steps,
            initial_learning_rate=args.warmup_initial_learning_rate,
            warmup_type=args.warmup_type,
        )
    return schedule


def _load_schedule(path: str):
    """The schedule serialized in ``path`` (ValueError naming the file if it is not one)."""
    import json

    import keras

    try:
        config = json.loads(pathlib.Path(path).read_text())
        schedule = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"cannot read a schedule from {path!r}: {err}") from err
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(
            f"{path!r} holds {type(schedule).__name__}, not a keras LearningRateSchedule."
        )
    return schedule


def run(args: argparse.Namespace) -> int:
    """Parse the schedule's options (exit 2 if bad), build the schedule, draw it."""
    from tfkit.plot import _pyplot, plot_schedule

    options = schedule_parser(args.schedule).parse_args(args.options)
    output = pathlib.Path(options.output or f"{options.cli_name}.png")
    if not output.parent.is_dir():
        raise ValueError(f"cannot write {output}: directory {output.parent} does not exist")
    schedule = build_schedule(options)
    plt = _pyplot()  # ImportError naming the extra when matplotlib is missing
    fig = plot_schedule(schedule, output, steps=options.steps, log_scale=options.log_scale)
    plt.close(fig)
    print(f"wrote {output}")
    return 0
