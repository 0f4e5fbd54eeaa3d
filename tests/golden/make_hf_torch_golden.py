"""Produce tests/golden/hf_torch.json: Hugging Face and PyTorch reference curves.

Not collected by pytest. Run once in an environment with the pinned reference
versions (neither is a tfkit dependency), outside the repository's venv::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers==5.24.0 numpy
    torch/bin/python tests/golden/make_hf_torch_golden.py

The versions used are recorded in the file ("versions"); the tests check
that the file was made with TRANSFORMERS_VERSION.

Step semantics: value k is the learning rate used by the (k+1)-th optimizer
update, i.e. the rate after k calls of ``scheduler.step()`` (k = 0: right
after construction). For GradScaler, value k is the scale after k updates.
"""

from __future__ import annotations

import json
import math
import pathlib
import warnings

OUT = pathlib.Path(__file__).with_name("hf_torch.json")
TRANSFORMERS_VERSION = "5.24.0"
TORCH_VERSION = "2.13.0"

# (name, learning rate, num_warmup_steps, num_training_steps, scheduler_specific_kwargs)
HF_CASES = [
    ("linear", 0.1, 10, 50, {}),
    ("linear", 3e-4, 0, 37, {}),
    ("cosine", 0.1, 10, 50, {}),
    ("cosine", 2e-3, 7, 60, {"num_cycles": 1.3}),
    ("cosine_with_restarts", 0.1, 10, 50, {}),
    ("cosine_with_restarts", 0.05, 5, 65, {"num_cycles": 3}),
    ("cosine_with_restarts", 0.05, 4, 54, {"num_cycles": 2.5}),
    ("polynomial", 0.1, 10, 50, {}),
    ("polynomial", 0.02, 6, 46, {"lr_end": 1e-3, "power": 2.0}),
    ("polynomial", 0.02, 0, 30, {"lr_end": 5e-3, "power": 0.5}),
    ("constant", 0.1, None, None, {}),
    ("constant_with_warmup", 0.1, 10, None, {}),
    ("constant_with_warmup", 0.01, 0, None, {}),
    ("inverse_sqrt", 0.1, 10, None, {}),
    ("inverse_sqrt", 0.1, 8, None, {"timescale": 20}),
    ("inverse_sqrt", 0.1, 0, None, {}),
    ("inverse_sqrt", 0.1, 12, None, {"timescale": 5}),
    ("cosine_with_min_lr", 0.1, 10, 50, {"min_lr": 1e-3}),
    ("cosine_with_min_lr", 0.1, 5, 45, {"min_lr_rate": 0.2, "num_cycles": 0.75}),
    ("cosine_warmup_with_min_lr", 0.1, 10, 50, {"min_lr": 1e-3}),
    ("cosine_warmup_with_min_lr", 0.1, 6, 40, {"min_lr_rate": 0.1, "warmup_lr_rate": 0.2}),
    ("cosine_warmup_with_min_lr", 0.1, 1, 30, {"min_lr_rate": 0.05, "num_cycles": 1.0}),
    ("warmup_stable_decay", 0.1, 10, 60, {"num_decay_steps": 15}),
    (
        "warmup_stable_decay",
        0.1,
        8,
        None,
        {
            "num_stable_steps": 20,
            "num_decay_steps": 12,
            "min_lr_ratio": 0.1,
            "warmup_type": "cosine",
            "decay_type": "1-sqrt",
        },
    ),
    (
        "warmup_stable_decay",
        0.05,
        6,
        40,
        {
            "num_decay_steps": 10,
            "min_lr_ratio": 0.2,
            "warmup_type": "1-sqrt",
            "decay_type": "linear",
        },
    ),
    (
        "warmup_stable_decay",
        0.05,
        5,
        40,
        {"num_decay_steps": 10, "decay_type": "cosine", "num_cycles": 0.8},
    ),
    ("warmup_stable_decay", 0.05, 0, 20, {"num_decay_steps": 0}),
]
# Steps past num_training_steps are recorded too (the tests check only where
# tfkit promises equality, and document the rest).
EXTRA_STEPS = 15


def hf_cases() -> dict:
    import torch
    from transformers import get_scheduler

    cases = {}
    for i, (name, lr, warmup, total, kw) in enumerate(HF_CASES):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=lr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched = get_scheduler(
                name,
                opt,
                num_warmup_steps=warmup,
                num_training_steps=total,
                scheduler_specific_kwargs=dict(kw),
            )
        end = total if total is not None else 60
        values = []
        for _ in range(end + EXTRA_STEPS + 1):
            values.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            sched.step()
        cases[f"hf_{i:02d}_{name}"] = {
            "reference": "transformers.get_scheduler",
            "name": name,
            "learning_rate": lr,
            "num_warmup_steps": warmup,
            "num_training_steps": total,
            "scheduler_specific_kwargs": kw,
            "steps": list(range(len(values))),
            "values": values,
        }
    return cases


def _lrs(make, n, lr=0.1):
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = make(opt)
    values = []
    for _ in range(n):
        values.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return values


def torch_cases() -> dict:
    import torch

    S = torch.optim.lr_scheduler
    cases = {}
    for i, kw in enumerate(
        [
            dict(milestones=[12, 3, 7], gamma=0.5),
            dict(milestones=[10, 10, 25], gamma=0.3),
            dict(milestones=[0, 5, 5, 5, 2], gamma=0.7),
            dict(milestones=[4, 9], gamma=1.5),
        ]
    ):
        cases[f"torch_multistep_{i}"] = {
            "reference": "torch.optim.lr_scheduler.MultiStepLR",
            "base_lr": 0.1,
            "kwargs": kw,
            "steps": list(range(40)),
            "values": _lrs(lambda o, kw=kw: S.MultiStepLR(o, **kw), 40),
        }
    chained = {
        "constant_exponential": (
            [
                ("ConstantLR", dict(factor=0.1, total_iters=4)),
                ("ExponentialLR", dict(gamma=0.9)),
            ]
        ),
        "linear_multistep": (
            [
                ("LinearLR", dict(start_factor=0.2, end_factor=1.0, total_iters=8)),
                ("MultiStepLR", dict(milestones=[12, 20, 20], gamma=0.5)),
            ]
        ),
    }
    for key, parts in chained.items():

        def make(o, parts=parts):
            return S.ChainedScheduler([getattr(S, cls)(o, **kw) for cls, kw in parts])

        cases[f"torch_chained_{key}"] = {
            "reference": "torch.optim.lr_scheduler.ChainedScheduler",
            "base_lr": 0.1,
            "schedulers": [[cls, kw] for cls, kw in parts],
            "steps": list(range(30)),
            "values": _lrs(make, 30),
        }
    # Single schedulers of README's mapping rows (base lr 0.1), past their end too.
    rows = {
        "ConstantLR": dict(factor=0.25, total_iters=6),
        "LinearLR": dict(start_factor=0.1, end_factor=0.8, total_iters=10),
        "PolynomialLR": dict(total_iters=12, power=2.0),
        "CosineAnnealingLR": dict(T_max=10, eta_min=0.01),
    }
    for cls, kw in rows.items():
        cases[f"torch_row_{cls}"] = {
            "reference": f"torch.optim.lr_scheduler.{cls}",
            "base_lr": 0.1,
            "kwargs": kw,
            "steps": list(range(25)),
            "values": _lrs(lambda o, cls=cls, kw=kw: getattr(S, cls)(o, **kw), 25),
        }
    # CyclicLR's momentum cycling (SGD momentum), for MomentumScheduler(Cyclic(...)).
    for mode in ("triangular", "triangular2", "exp_range"):
        kw = dict(
            base_lr=0.001,
            max_lr=0.01,
            step_size_up=5,
            step_size_down=3,
            mode=mode,
            gamma=0.98,
            cycle_momentum=True,
            base_momentum=0.8,
            max_momentum=0.95,
        )
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        sched = S.CyclicLR(opt, **kw)
        momentum = []
        for _ in range(40):
            momentum.append(float(opt.param_groups[0]["momentum"]))
            opt.step()
            sched.step()
        cases[f"torch_cyclic_momentum_{mode}"] = {
            "reference": "torch.optim.lr_scheduler.CyclicLR",
            "kwargs": kw,
            "steps": list(range(40)),
            "momentum": momentum,
        }
    # GradScaler: the scale after each update, for a fixed pattern of overflows.
    pattern = [False] * 7 + [True] + [False] * 3 + [True, True] + [False] * 12 + [True]
    pattern += [False] * 9
    for i, kw in enumerate(
        [
            dict(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
            dict(init_scale=1024.0, growth_factor=1.5, backoff_factor=0.25, growth_interval=2),
            dict(init_scale=100.0, growth_factor=3.0, backoff_factor=0.9, growth_interval=4),
        ]
    ):
        scaler = torch.amp.GradScaler("cpu", **kw)
        param = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([param], lr=0.0)
        scales = [float(scaler.get_scale())]
        for overflow in pattern:
            opt.zero_grad()
            loss = param.sum() * (math.inf if overflow else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            scales.append(float(scaler.get_scale()))
        cases[f"torch_gradscaler_{i}"] = {
            "reference": "torch.amp.GradScaler",
            "kwargs": kw,
            "overflow": pattern,
            "scales": scales,
        }
    return cases


def main() -> None:
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if transformers.__version__ != TRANSFORMERS_VERSION:
        raise SystemExit(f"need transformers=={TRANSFORMERS_VERSION}, have {versions}")
    data = {"versions": versions, **hf_cases(), **torch_cases()}
    OUT.write_text(json.dumps(data, indent=0) + "\n")
    print(f"wrote {len(data) - 1} cases to {OUT} with {versions}")


if __name__ == "__main__":
    main()
