"""Plot learning-rate schedules (and OneCycle's momentum) to PNG: ``tfkit plot``.

Python::

    from tfkit.plot import plot_schedule
    from tfkit.schedules import OneCycle
    plot_schedule(OneCycle(0.1, total_steps=1000), "onecycle.png")

Command line (options are the schedule's constructor arguments in
``--kebab-case``; lists are comma-separated)::

    tfkit plot onecycle --max-learning-rate 0.1 --total-steps 1000 -o onecycle.png
    tfkit plot piecewise --boundaries 100,200 --values 0.1,0.01,0.001 --steps 300
    tfkit plot cosine --initial-learning-rate 0.1 --decay-steps 900 --warmup-steps 100

    tfkit plot schedule.json --log-scale       # any schedule: Join, Product, get_scheduler's

``--warmup-steps``/``--warmup-type``/``--warmup-initial-learning-rate`` wrap any
schedule in ``Warmup`` (for ``cosine`` and ``cosine-restarts``,
``--warmup-steps`` is their own argument and needs ``--warmup-target``).
Schedules made of other schedules (``Join``, ``Product``, ``Warmup``, what
``get_scheduler`` returns) are read from a JSON file holding
``keras.saving.serialize_keras_object(schedule)``, loaded with
``safe_mode=True``. ``--log-scale`` draws the rate on a logarithmic axis
(steps where the rate is 0 are left out of the curve).

matplotlib is an optional dependency (``pip install tfkit[examples]``); it is
imported only when a plot is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import argparse
import inspect
import pathlib
import sys
import textwrap

import numpy as np

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
}
# Drawn from a JSON file (their arguments are schedules): see the module docstring.
COMPOSITE = ("Join", "Product", "Warmup")
_NOT_OPTIONS = {"self", "name", "dtype"}


def _pyplot():
    """matplotlib.pyplot with the Agg backend, or an ImportError saying how to get it."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "tfkit plot needs matplotlib, an optional dependency: "
            "pip install 'tfkit[examples]' (or pip install matplotlib)"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def schedule_values(schedule, steps: int) -> np.ndarray:
    """``schedule(k)`` for ``k`` in ``range(steps)``.

    tfkit schedules are elementwise and take the whole step vector in one call;
    other schedules (Keras' own) are called step by step through one traced graph.
    """
    import tensorflow as tf

    ks = tf.range(steps, dtype=tf.int64)
    if type(schedule).__module__.startswith("tfkit."):
        try:
            values = np.asarray(schedule(ks), dtype=np.float64)
            if values.shape == (steps,):
                return values
        except (ValueError, TypeError, tf.errors.InvalidArgumentError):
            pass  # a Keras schedule nested in a Join/Product may take scalar steps only
    fn = tf.function(lambda step: schedule(step))
    return np.array([float(fn(k)) for k in ks])


def default_steps(schedule) -> int:
    """A plot length that shows the whole shape: the end of a finite schedule plus 10%."""
    config = schedule.get_config()
    kind = type(schedule).__name__
    if kind == "Join":
        return int(schedule.boundaries[-1]) + default_steps(schedule.schedules[-1])
    if kind == "Product":
        return max(default_steps(s) for s in schedule.schedules)
    if kind == "Constant":
        return 100
    if kind == "InverseSqrtDecay":
        return int(10 * config["timescale"])
    if kind == "WarmupStableDecay":
        end = config["warmup_steps"] + config["stable_steps"] + config["decay_steps"]
        return int(end * 1.1) + 1
    if "total_steps" in config:
        return int(config["total_steps"])
    warmup = int(config.get("warmup_steps", 0) or 0)
    if "schedule" in config:  # Warmup: the inner schedule after the warmup
        return warmup + default_steps(schedule.schedule)
    if "first_decay_steps" in config:
        t_mul = config["t_mul"]
        cycles = 4 if t_mul == 1 else 3
        return warmup + int(config["first_decay_steps"] * sum(t_mul**i for i in range(cycles)))
    if "step_size" in config:
        down = config["step_size_down"] or config["step_size"]
        return int(4 * (config["step_size"] + down))
    for key in ("boundaries", "milestones"):
        if key in config:
            return int(max(config[key]) * 1.3) + 1
    if "decay_steps" in config:
        return warmup + int(config["decay_steps"] * 1.1) + 1
    return 1000


def plot_schedule(
    schedule,
    path: str | pathlib.Path | None = None,
    steps: int | None = None,
    title: str | None = None,
    log_scale: bool = False,
):
    """Draw ``schedule`` over ``steps`` updates (default: its whole shape); save a PNG if ``path``.

    Any ``LearningRateSchedule`` is drawn (tfkit's, composites such as
    ``Join`` and ``Product``, Keras'). A schedule with a ``momentum_schedule``
    (``OneCycle``) also gets its momentum on a second y axis. ``log_scale``
    puts the rate on a logarithmic axis; steps where it is 0 are not drawn
    there. Returns the matplotlib ``Figure``.
    """
    if not isinstance(log_scale, bool):
        raise TypeError(
            f"plot_schedule: `log_scale` must be True or False; received log_scale={log_scale!r}."
        )
    plt = _pyplot()
    steps = default_steps(schedule) if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"plot_schedule: `steps` must be >= 1; received steps={steps!r}.")
    x = np.arange(steps)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    rates = schedule_values(schedule, steps)
    if log_scale:
        rates = np.where(rates > 0, rates, np.nan)
    ax.plot(x, rates, color="tab:blue", label="learning rate")
    ax.set_xlabel("step (optimizer updates)")
    ax.set_ylabel("learning rate")
    if log_scale:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    momentum = getattr(schedule, "momentum_schedule", None)
    if momentum is not None:
        ax2 = ax.twinx()
        ax2.plot(x, schedule_values(momentum, steps), color="tab:orange", ls="--", label="momentum")
        ax2.set_ylabel("momentum / beta_1")
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="center right")
    ax.set_title(title or type(schedule).__name__, fontsize=8 if title else None)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def gallery_schedules() -> dict:
    """One example of every schedule, keyed by CLI name (the README gallery)."""
    from tfkit import schedules as S

    return {
        "onecycle": S.OneCycle(0.1, total_steps=1000),
        "onecycle_three_phase": S.OneCycle(0.1, 1000, anneal_strategy="linear", three_phase=True),
        "cyclic": S.Cyclic(0.01, 0.1, step_size=100, mode="triangular2"),
        "cosine": S.CosineDecay(0.0, 900, warmup_target=0.1, warmup_steps=100),
        "cosine_restarts": S.CosineDecayRestarts(0.1, 100, t_mul=2.0, m_mul=0.8),
        "linear_cosine": S.LinearCosineDecay(0.1, 1000, num_periods=3.0, beta=0.05),
        "exponential": S.ExponentialDecay(0.1, 100, 0.7, staircase=True),
        "natural_exp": S.NaturalExpDecay(0.1, 100, 0.3),
        "inverse_time": S.InverseTimeDecay(0.1, 100, 1.0),
        "polynomial": S.PolynomialDecay(0.1, 300, 0.01, power=2.0, cycle=True),
        "piecewise": S.PiecewiseConstantDecay([300, 600, 800], [0.1, 0.05, 0.01, 0.001]),
        "multistep": S.MultiStepDecay(0.1, [300, 600, 800], gamma=0.3),
        "warmup_join": S.Warmup(
            S.Join([S.PolynomialDecay(0.1, 400, 0.05), S.CosineDecay(0.05, 500)], [400]),
            warmup_steps=100,
            initial_learning_rate=0.01,
            warmup_type="constant",
        ),
        "warmup_stable_decay": S.WarmupStableDecay(
            0.1, 100, 600, 250, alpha=0.05, decay_type="1-sqrt"
        ),
        "inverse_sqrt": S.Warmup(S.InverseSqrtDecay(0.1, timescale=100), 100),
        "product": S.Product(
            [
                S.CosineDecayRestarts(0.1, 200, t_mul=1.0),
                S.ExponentialDecay(1.0, 1000, 0.1),
            ]
        ),
    }


def describe(schedule) -> str:
    """``ClassName(arg=value, ...)`` without unset arguments, name and dtype (a plot title)."""
    parts = []
    for key, value in schedule.get_config().items():
        if key in _NOT_OPTIONS or value is None:
            continue
        if isinstance(value, dict) and "class_name" in value:
            value = describe(getattr(schedule, key))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            value = "[" + ", ".join(describe(v) for v in getattr(schedule, key)) + "]"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}={value}")
    return f"{type(schedule).__name__}({', '.join(parts)})"


def write_gallery(directory: str | pathlib.Path, steps: int = 1000) -> list[pathlib.Path]:
    """Write ``schedule_<name>.png`` for every gallery schedule into ``directory``."""
    plt = _pyplot()
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schedule in gallery_schedules().items():
        path = directory / f"schedule_{name}.png"
        title = textwrap.fill(describe(schedule), 80)
        plt.close(plot_schedule(schedule, path, steps=steps, title=title))
        paths.append(path)
    return paths


# --- The `tfkit plot` subcommand.


def _schedule_class(class_name: str):
    import tfkit.schedules

    return getattr(tfkit.schedules, class_name)


def _list_parser(item):
    def parse(text: str):
        try:
            return [item(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {err}") from err

    return parse


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _number(text: str):
    """An int when the text is one (steps), else a float."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _option_type(annotation: str, default):
    if "Sequence" in annotation:
        return _list_parser(_number)
    if annotation.startswith("bool"):
        return _bool
    if annotation.startswith("str"):
        return str
    return _number


def _is_json(name: str) -> bool:
    return name.lower().endswith(".json")


def _add_output_options(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--steps", type=int, default=None, help="steps to plot (default: whole shape)")
    p.add_argument("--log-scale", action="store_true", help="logarithmic learning-rate axis")
    default = f"{pathlib.Path(name).stem}.png"
    p.add_argument("-o", "--output", default=None, help=f"PNG path (default {default})")


def schedule_parser(name: str) -> argparse.ArgumentParser:
    """The option parser of ``tfkit plot NAME``: the constructor arguments of that schedule.

    ``NAME`` may also be a ``.json`` file with a serialized schedule (any
    schedule, composites included); its parser has the output options only.
    """
    if _is_json(name):
        p = argparse.ArgumentParser(
            prog=f"tfkit plot {name}",
            description="Draw the schedule serialized in this JSON file "
            "(keras.saving.serialize_keras_object output; loaded with safe_mode=True).",
        )
        _add_output_options(p, name)
        p.set_defaults(schedule_file=name, cli_name=pathlib.Path(name).stem)
        return p
    if name not in SCHEDULES and name not in SCHEDULES.values():
        p = argparse.ArgumentParser(prog="tfkit plot")
        hint = f" ({name} takes schedules: save it to JSON)" if name in COMPOSITE else ""
        p.error(
            f"argument SCHEDULE: invalid choice: {name!r}{hint} (choose from "
            f"{', '.join(SCHEDULES)}, a class name, or FILE.json)"
        )
    class_name = SCHEDULES.get(name, name)
    cls = _schedule_class(class_name)
    summary = (cls.__doc__ or "").strip().splitlines()[0]
    p = argparse.ArgumentParser(prog=f"tfkit plot {name}", description=f"{class_name}: {summary}")
    own = inspect.signature(cls.__init__).parameters
    for param in own.values():
        if param.name in _NOT_OPTIONS:
            continue
        required = param.default is inspect.Parameter.empty
        kwargs = dict(
            dest=f"arg_{param.name}",
            type=_option_type(str(param.annotation), param.default),
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


def register(subparsers) -> None:
    """Add ``tfkit plot NAME [--argument VALUE ...] [-o out.png]``.

    The per-schedule options are parsed in ``run`` so that building the
    ``tfkit`` parser does not import TensorFlow.
    """
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
    """Parse the schedule's options (exit 2 with usage if bad), build it, draw it."""
    options = schedule_parser(args.schedule).parse_args(args.options)
    schedule = build_schedule(options)
    output = options.output or f"{options.cli_name}.png"
    try:
        plt = _pyplot()
    except ImportError as err:
        print(f"tfkit plot: error: {err}", file=sys.stderr)
        return 1
    fig = plot_schedule(schedule, output, steps=options.steps, log_scale=options.log_scale)
    plt.close(fig)
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tfkit.plot NAME ...``: the same as ``tfkit plot NAME ...``."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(prog="tfkit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plot", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except ValueError as err:
        parser.exit(2, f"tfkit plot: error: {err}\n")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
