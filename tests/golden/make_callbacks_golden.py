"""Golden values for tests/test_callbacks_*.py, computed with PyTorch (not a test dependency).

Run: torch/bin/python tests/golden/make_callbacks_golden.py
and paste the printed literals into the tests.
"""

import torch


def one_cycle_momentum(optimizer_name: str, anneal_strategy: str, total_steps: int = 12):
    param = torch.nn.Parameter(torch.zeros(1))
    if optimizer_name == "sgd":
        opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        key = "momentum"
    else:
        opt = torch.optim.Adam([param], lr=0.1, betas=(0.9, 0.999))
        key = "betas"
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=total_steps, pct_start=0.3, anneal_strategy=anneal_strategy,
        cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
    )
    values = []
    for _ in range(total_steps):
        group = opt.param_groups[0]
        values.append(group[key] if key == "momentum" else group[key][0])  # used by this update
        opt.step()
        sched.step()
    return values


def plateau(losses, threshold_mode, patience, factor=0.5, threshold=0.1, cooldown=0):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=factor, patience=patience, threshold=threshold,
        threshold_mode=threshold_mode, cooldown=cooldown,
    )
    lrs = []
    for loss in losses:
        sched.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


if __name__ == "__main__":
    for name in ("sgd", "adam"):
        for anneal in ("cos", "linear"):
            print(f"ONE_CYCLE_{name.upper()}_{anneal.upper()} =", one_cycle_momentum(name, anneal))
    losses = [10.0, 9.5, 9.2, 8.0, 7.9, 7.8, 7.7, 7.0, 7.0, 6.99, 6.0, 6.0, 6.0, 6.0]
    print("PLATEAU_LOSSES =", losses)
    for mode in ("rel", "abs"):
        print(f"PLATEAU_TORCH_{mode.upper()} =", plateau(losses, mode, patience=1))
