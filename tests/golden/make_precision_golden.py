"""Golden values for tests/test_precision_loss_scale.py from PyTorch's GradScaler.

Run with the PyTorch environment (not a test dependency):

    torch/bin/python tests/golden/make_precision_golden.py

It drives ``torch.amp.GradScaler`` (growth_factor=2, backoff_factor=0.5) and
``torch.optim.SGD(lr=0.5, momentum=0.5)`` through the same sequence of finite /
overflowing steps as ``test_custom_loop_follows_reference`` and prints, per step,
the scale after ``update()`` and the weights. GradScaler has no bounds, so the
tfkit side runs with bounds far outside the range reached.
"""

import numpy as np
import torch

FLAGS = [True, False, False, False] + [True] * 12 + [False, True]


def main() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.5, momentum=0.5)
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3
    )
    rng = np.random.default_rng(0)
    scales, weights = [], []
    for i, finite in enumerate(FLAGS):
        x = rng.normal(size=2).astype("float32")
        if not finite:
            x[i % 2] = np.inf
        opt.zero_grad()
        loss = (w * torch.from_numpy(x)).sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        weights.append([round(float(v), 7) for v in w.detach()])
    print("TORCH_SCALES =", scales)
    print("TORCH_WEIGHTS =", weights)


if __name__ == "__main__":
    main()
