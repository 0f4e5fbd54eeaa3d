"""Produce tests/golden/schedules.json: reference learning rates from PyTorch, TF1 and Keras.

Not collected by pytest. Run it in two interpreters (PyTorch is not a tfkit
dependency, so it lives in its own environment); each run merges its cases
into the JSON file:

    torch/bin/python tests/golden/make_schedules_golden.py torch
    .venv/bin/python tests/golden/make_schedules_golden.py tf

Each case stores the reference's own arguments, the steps and the values.
Step semantics recorded: value k is the rate used by the (k+1)-th optimizer
update, i.e. PyTorch's lr after k calls of ``scheduler.step()`` (the value
right after construction for k = 0) and Keras/TF1 evaluated at global step k.
"""

from __future__ import annotations

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).with_name("schedules.json")


def torch_cases() -> dict:
    import torch

    def run(make_scheduler, steps, optimizer="sgd", momentum_key=None):
        param = torch.nn.Parameter(torch.zeros(1))
        if optimizer == "sgd":
            opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        else:
            opt = torch.optim.Adam([param], lr=0.1)
        sched = make_scheduler(opt)
        lrs, moms = [], []
        for _ in range(steps):
            group = opt.param_groups[0]
            lrs.append(float(group["lr"]))
            if momentum_key == "momentum":
                moms.append(float(group["momentum"]))
            elif momentum_key == "beta1":
                moms.append(float(group["betas"][0]))
            opt.step()
            sched.step()
        return lrs, moms

    cases = {}
    onecycle = [
        dict(max_lr=0.1, total_steps=30, pct_start=0.3, anneal_strategy="cos", three_phase=False),
        dict(
            max_lr=0.1, total_steps=30, pct_start=0.3, anneal_strategy="linear", three_phase=False
        ),
        dict(
            max_lr=0.5,
            total_steps=37,
            pct_start=0.25,
            anneal_strategy="cos",
            three_phase=True,
            div_factor=10.0,
            final_div_factor=100.0,
            base_momentum=0.8,
            max_momentum=0.9,
        ),
        dict(
            max_lr=0.5, total_steps=37, pct_start=0.25, anneal_strategy="linear", three_phase=True
        ),
    ]
    for i, kw in enumerate(onecycle):
        for opt, key in (("sgd", "momentum"), ("adam", "beta1")):
            lrs, moms = run(
                lambda o, kw=kw: torch.optim.lr_scheduler.OneCycleLR(o, **kw),
                kw["total_steps"],
                opt,
                key,
            )
            cases[f"torch_onecycle_{i}_{opt}"] = {
                "reference": "torch.optim.lr_scheduler.OneCycleLR",
                "kwargs": kw,
                "steps": list(range(kw["total_steps"])),
                "values": lrs,
                "momentum": moms,
            }
    for i, kw in enumerate(
        [dict(T_0=5, T_mult=2, eta_min=0.001), dict(T_0=7, T_mult=1, eta_min=0.0)]
    ):
        lrs, _ = run(
            lambda o, kw=kw: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, **kw), 80
        )
        cases[f"torch_sgdr_{i}"] = {
            "reference": "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts",
            "base_lr": 0.1,
            "kwargs": kw,
            "steps": list(range(80)),
            "values": lrs,
        }
    for mode in ("triangular", "triangular2", "exp_range"):
        kw = dict(
            base_lr=0.001,
            max_lr=0.01,
            step_size_up=4,
            step_size_down=6,
            mode=mode,
            gamma=0.97,
            cycle_momentum=False,
        )
        lrs, _ = run(lambda o, kw=kw: torch.optim.lr_scheduler.CyclicLR(o, **kw), 60)
        cases[f"torch_cyclic_{mode}"] = {
            "reference": "torch.optim.lr_scheduler.CyclicLR",
            "kwargs": kw,
            "steps": list(range(60)),
            "values": lrs,
        }
    kw = dict(milestones=[3, 7, 12], gamma=0.5)
    lrs, _ = run(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, **kw), 20)
    cases["torch_multistep"] = {
        "reference": "torch.optim.lr_scheduler.MultiStepLR",
        "base_lr": 0.1,
        "kwargs": kw,
        "steps": list(range(20)),
        "values": lrs,
    }
    return cases


def tf_cases() -> dict:
    import keras
    import tensorflow as tf

    def tf1(fn, kw, steps):
        values = []
        for s in steps:
            out = fn(global_step=tf.constant(s, tf.int64), **kw)
            values.append(float(out() if callable(out) else out))
        return values

    def keras_values(schedule, steps):
        return [float(schedule(tf.constant(s, tf.int64))) for s in steps]

    cases = {}
    steps = list(range(0, 61)) + [100, 1000]
    v1 = tf.compat.v1.train
    for i, kw in enumerate(
        [
            dict(learning_rate=0.1, decay_steps=10, decay_rate=0.5, staircase=False),
            dict(learning_rate=0.1, decay_steps=7, decay_rate=0.3, staircase=True),
        ]
    ):
        cases[f"tf1_natural_exp_{i}"] = {
            "reference": "tf.compat.v1.train.natural_exp_decay",
            "kwargs": kw,
            "steps": steps,
            "values": tf1(v1.natural_exp_decay, kw, steps),
        }
        cases[f"tf1_inverse_time_{i}"] = {
            "reference": "tf.compat.v1.train.inverse_time_decay",
            "kwargs": kw,
            "steps": steps,
            "values": tf1(v1.inverse_time_decay, kw, steps),
        }
    for i, kw in enumerate(
        [
            dict(learning_rate=0.1, decay_steps=50),
            dict(learning_rate=0.2, decay_steps=40, num_periods=2.0, alpha=0.1, beta=0.01),
        ]
    ):
        cases[f"tf1_linear_cosine_{i}"] = {
            "reference": "tf.compat.v1.train.linear_cosine_decay",
            "kwargs": kw,
            "steps": steps,
            "values": tf1(v1.linear_cosine_decay, kw, steps),
        }
    S = keras.optimizers.schedules
    keras_specs = {
        "keras_sgdr_0": (
            "CosineDecayRestarts",
            dict(initial_learning_rate=0.1, first_decay_steps=5),
        ),
        "keras_sgdr_1": (
            "CosineDecayRestarts",
            dict(initial_learning_rate=0.1, first_decay_steps=6, t_mul=1.5, m_mul=0.8, alpha=0.1),
        ),
        "keras_sgdr_2": (
            "CosineDecayRestarts",
            dict(initial_learning_rate=0.1, first_decay_steps=7, t_mul=1.0, m_mul=0.9, alpha=0.0),
        ),
        "keras_poly_0": (
            "PolynomialDecay",
            dict(initial_learning_rate=0.1, decay_steps=20, end_learning_rate=0.01, power=2.0),
        ),
        "keras_poly_1": (
            "PolynomialDecay",
            dict(
                initial_learning_rate=0.1,
                decay_steps=20,
                end_learning_rate=0.01,
                power=0.5,
                cycle=True,
            ),
        ),
        "keras_piecewise": (
            "PiecewiseConstantDecay",
            dict(boundaries=[5, 12, 30], values=[0.1, 0.05, 0.01, 0.001]),
        ),
        "keras_exp_0": (
            "ExponentialDecay",
            dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5),
        ),
        "keras_exp_1": (
            "ExponentialDecay",
            dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.9, staircase=True),
        ),
        "keras_cosine_0": (
            "CosineDecay",
            dict(initial_learning_rate=0.1, decay_steps=40, alpha=0.05),
        ),
        "keras_cosine_1": (
            "CosineDecay",
            dict(
                initial_learning_rate=0.01,
                decay_steps=40,
                alpha=0.1,
                warmup_target=0.2,
                warmup_steps=10,
            ),
        ),
        "keras_inverse_time": (
            "InverseTimeDecay",
            dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=0.5),
        ),
    }
    for name, (cls, kw) in keras_specs.items():
        cases[name] = {
            "reference": f"keras.optimizers.schedules.{cls}",
            "kwargs": kw,
            "steps": steps,
            "values": keras_values(getattr(S, cls)(**kw), steps),
        }
    return cases


def main(which: str) -> None:
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data.update(torch_cases() if which == "torch" else tf_cases())
    OUT.write_text(json.dumps(dict(sorted(data.items())), indent=0) + "\n")
    print(f"wrote {len(data)} cases to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
