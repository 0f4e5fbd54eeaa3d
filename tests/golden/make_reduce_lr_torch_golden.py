"""Golden values: torch.optim.lr_scheduler.ReduceLROnPlateau in every mode.

Run once with torch 2.13 (CPU): ``python tests/golden/make_reduce_lr_torch_golden.py``.
Writes tests/golden/reduce_lr_torch.json: for each case, the keyword arguments,
the metric sequence and every parameter group's lr after each ``step(metric)``.
The tests read the JSON; they never import torch.
"""

from __future__ import annotations

import itertools
import json
import math
import pathlib

import torch

# Plateaus, exact ties at the threshold, near-ties, a rise and a NaN.
SEQUENCES = {
    "falling_plateaus": [10.0, 9.5, 9.2, 8.0, 7.9, 7.8, 7.7, 7.0, 7.0, 6.99, 6.0, 6.0, 6.0, 6.0,
                         5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
    "near_ties": [1.0, 0.9999, 0.99989, 0.9998, 0.9, 0.8999, 0.89991, 0.9, 0.9, 0.9, 0.9, 0.9,
                  0.89, 0.89, 0.89, 0.89, 0.89, 0.89, 0.89, 0.89],
    "rising": [0.1, 0.2, 0.3, 0.35, 0.35, 0.36, 0.5, 0.5, 0.5, 0.5, 0.51, 0.52, 0.52, 0.52,
               0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
    "with_nan": [3.0, 2.0, math.nan, 2.0, 2.0, 1.0, math.nan, math.nan, math.nan, 1.0, 1.0, 1.0,
                 0.5, 0.5, 0.5, 0.5],
    "negative": [-1.0, -1.05, -1.1, -1.1, -1.1, -1.2, -1.2, -1.2, -1.2, -1.3, -1.3, -1.3,
                 -1.3, -1.3],
}
BASE_LRS = [1.0, 0.25]  # two parameter groups


def run(sequence, **kwargs):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in BASE_LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, BASE_LRS, strict=True)]
    optimizer = torch.optim.SGD(groups, lr=BASE_LRS[0])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
    lrs = []
    for value in sequence:
        scheduler.step(value)
        lrs.append([g["lr"] for g in optimizer.param_groups])
    return lrs


def cases():
    out = {}
    grid = itertools.product(
        ("min", "max"), ("rel", "abs"), (0, 2), (0, 1, 3), (1e-4, 0.05)
    )
    for mode, threshold_mode, cooldown, patience, threshold in grid:
        kwargs = dict(mode=mode, threshold_mode=threshold_mode, cooldown=cooldown,
                      patience=patience, threshold=threshold, factor=0.5)
        for name, seq in SEQUENCES.items():
            if mode == "max":
                seq = [-v for v in seq]
            key = f"{name}-{mode}-{threshold_mode}-c{cooldown}-p{patience}-t{threshold}"
            out[key] = dict(kwargs=kwargs, sequence=seq, lrs=run(seq, **kwargs))
    # min_lr (scalar and per group) and eps, on a long falling plateau.
    seq = SEQUENCES["falling_plateaus"] + [5.0] * 20
    extras = {
        "min_lr_scalar": dict(min_lr=0.1),
        "min_lr_per_group": dict(min_lr=[0.2, 0.05]),
        "eps_large": dict(eps=0.2),
        "eps_and_min_lr": dict(eps=0.05, min_lr=[0.0, 0.1], cooldown=1),
        "defaults": dict(),
        "factor_0.1_patience_0": dict(factor=0.1, patience=0, min_lr=1e-6),
    }
    for name, extra in extras.items():
        kwargs = {} if name == "defaults" else {"mode": "min", "factor": 0.5, "patience": 1}
        kwargs.update(extra)
        out[name] = dict(kwargs=kwargs, sequence=seq, lrs=run(seq, **kwargs))
    return out


def main():
    data = {"versions": {"torch": torch.__version__}, "base_lrs": BASE_LRS, "cases": cases()}
    path = pathlib.Path(__file__).with_name("reduce_lr_torch.json")
    # NaN metrics are stored as the string "nan" (strict JSON has no NaN).
    for case in data["cases"].values():
        case["sequence"] = ["nan" if math.isnan(v) else v for v in case["sequence"]]
    path.write_text(json.dumps(data, allow_nan=False) + "\n")
    print(f"wrote {path} ({len(data['cases'])} cases)")


if __name__ == "__main__":
    main()
