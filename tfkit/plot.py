"""Plot learning-rate schedules (and OneCycle's momentum) to PNG: ``tfkit plot``.

Python::

    from tfkit.plot import plot_schedule
    from tfkit.schedules import OneCycle
    plot_schedule(OneCycle(0.1, total_steps=1000), "onecycle.png")

Command line: ``tfkit plot`` (:mod:`tfkit.cli.plot`), with ``--log-scale`` and
any serialized schedule from a JSON file (``Join``, ``Product``, ``Warmup``).

matplotlib is an optional dependency (``pip install tfkit[examples]``); it is
imported only when a plot is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import pathlib
import textwrap

import numpy as np

# Config keys that are not shown in a title.
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
    if "anneal_steps" in config:  # SWALR: the annealing, then a stretch of the constant rate
        return int(config["anneal_steps"] * 1.5) + 1
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
