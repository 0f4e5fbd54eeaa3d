"""Golden values for tests/test_callbacks_weight_averaging.py and the SWALR schedule tests.

Computed once with ``torch.optim.swa_utils`` (torch is not a test dependency):

    torch/bin/python tests/golden/make_swa_golden.py

writes tests/golden/swa.json: a seeded sequence of weights and what torch's
``AveragedModel`` (EMA via ``get_ema_multi_avg_fn``, and the default SWA mean)
holds after each ``update_parameters``, ``update_bn``'s statistics over a
seeded list of batches, and ``SWALR``'s learning rate after each ``step()``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

SHAPES = [(3, 2), (2,)]
STEPS = 12


def weight_sequence(rng):
    return [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]


class Params(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s)) for s in SHAPES])


def averages(sequence, **kwargs):
    module = Params()
    averaged = AveragedModel(module, **kwargs)
    out = []
    for weights in sequence:
        with torch.no_grad():
            for p, w in zip(module.ps, weights, strict=True):
                p.copy_(torch.from_numpy(w))
        averaged.update_parameters(module)
        out.append([p.detach().numpy().tolist() for p in averaged.module.ps])
    return out


def batch_norm(rng, batches=5, size=8, features=3):
    data = [(rng.standard_normal((size, features)) * 2.0 + 1.0).astype(np.float32)
            for _ in range(batches)]
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(features))
    loader = [torch.from_numpy(x) for x in data]
    update_bn(loader, model)
    bn = model[0]
    return {
        "batches": [x.tolist() for x in data],
        "running_mean": bn.running_mean.numpy().tolist(),
        # torch keeps the unbiased variance of each batch.
        "running_var_unbiased": bn.running_var.numpy().tolist(),
    }


def swalr(anneal_strategy, anneal_epochs, lr=0.1, swa_lr=0.01, steps=12):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = SWALR(opt, swa_lr=swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=anneal_strategy)
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])  # the rate of update i
        opt.step()
        sched.step()
    return {"lr": lr, "swa_lr": swa_lr, "anneal_strategy": anneal_strategy,
            "anneal_epochs": anneal_epochs, "values": values}


def main():
    rng = np.random.default_rng(23)
    sequence = weight_sequence(rng)
    out = {
        "torch": torch.__version__,
        "sequence": [[w.tolist() for w in step] for step in sequence],
        "ema_0.9": averages(sequence, multi_avg_fn=get_ema_multi_avg_fn(0.9)),
        "ema_0.5": averages(sequence, multi_avg_fn=get_ema_multi_avg_fn(0.5)),
        "swa": averages(sequence),
        "update_bn": batch_norm(rng),
        "swalr": [swalr(s, e) for s in ("cos", "linear") for e in (0, 1, 5)],
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "swa.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
