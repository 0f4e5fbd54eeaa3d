"""A small character-level Transformer language model, trained with tfkit.

The text is the Python standard library's own docstrings (see ``text_data.py``),
so it runs offline. It shows the three techniques that matter on models like
this one:

* a linear warmup joined to a cosine decay (``Warmup(CosineDecay(...))``) —
  attention models diverge without a warmup;
* ``Recompute`` around every Transformer block — activations, not weights,
  dominate memory here, and recomputing them costs about one extra forward pass;
* ``GradientAccumulator`` — the recipe's batch of ``micro_batch * accumulation``
  sequences is reached with a micro-batch that fits.

Run ``python examples/transformer_lm.py`` (a few minutes on 2 CPU cores);
it prints bits per character before and after training, and a sample.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import text_data  # noqa: E402

import tfkit  # noqa: E402


@keras.saving.register_keras_serializable(package="tfkit_examples")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm block: x + MHA(LN(x)) then x + MLP(LN(x)), causal."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.norm1 = keras.layers.LayerNormalization()
        self.attn = keras.layers.MultiHeadAttention(heads, dim // heads, dropout=dropout)
        self.norm2 = keras.layers.LayerNormalization()
        self.mlp1 = keras.layers.Dense(4 * dim, activation="gelu")
        self.mlp2 = keras.layers.Dense(dim)
        self.drop = keras.layers.Dropout(dropout)

    def call(self, x, training=None):
        h = self.norm1(x)
        x = x + self.attn(h, h, use_causal_mask=True, training=training)
        h = self.mlp2(self.mlp1(self.norm2(x)))
        return x + self.drop(h, training=training)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads, "dropout": self.dropout}


def build_model(context: int, dim: int, heads: int, blocks: int, recompute: bool) -> keras.Model:
    tokens = keras.Input((context,), dtype="int32")
    x = keras.layers.Embedding(len(text_data.VOCAB), dim)(tokens)
    positions = keras.ops.arange(context)
    x = x + keras.layers.Embedding(context, dim)(positions)
    for i in range(blocks):
        block = TransformerBlock(dim, heads, name=f"block_{i}")
        x = tfkit.recompute.Recompute(block)(x) if recompute else block(x)
    x = keras.layers.LayerNormalization()(x)
    logits = keras.layers.Dense(len(text_data.VOCAB), dtype="float32")(x)
    return keras.Model(tokens, logits)


def bits_per_char(model: keras.Model, x, y) -> float:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    logits = model.predict(x, batch_size=64, verbose=0)
    return float(loss(y, logits)) / math.log(2)


def sample(model: keras.Model, prompt: str, context: int, length: int = 120, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    ids = list(text_data.encode(prompt))
    for _ in range(length):
        window = ids[-context:]
        padded = np.zeros((1, context), "int32")
        padded[0, : len(window)] = window
        logits = model(padded, training=False)[0, len(window) - 1].numpy()
        p = np.exp((logits - logits.max()) / 0.8)
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return text_data.decode(ids)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--accumulation", type=int, default=4)
    p.add_argument("--updates", type=int, default=150, help="real optimizer updates")
    p.add_argument("--warmup", type=int, default=15, help="warmup updates")
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--no-recompute", action="store_true")
    p.add_argument("--chars", type=int, default=300_000, help="corpus size")
    p.add_argument("--output-dir", type=pathlib.Path, default=pathlib.Path("runs/transformer_lm"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("context", "dim", "heads", "blocks", "micro_batch", "accumulation", "updates"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.warmup >= args.updates:
        p.error(f"--warmup must be in [0, --updates), got {args.warmup}")
    if args.dim % args.heads:
        p.error(f"--dim ({args.dim}) must be a multiple of --heads ({args.heads})")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    ids = text_data.encode(text_data.stdlib_docstrings(args.chars))
    split = int(0.9 * len(ids))
    x_tr, y_tr = text_data.windows(ids[:split], args.context, stride=args.context // 2)
    x_va, y_va = text_data.windows(ids[split:], args.context)

    schedule = tfkit.schedules.Warmup(
        tfkit.schedules.CosineDecay(args.learning_rate, args.updates - args.warmup, alpha=0.1),
        warmup_steps=args.warmup,
    )
    optimizer = tfkit.GradientAccumulator(
        keras.optimizers.AdamW(schedule, weight_decay=0.01, global_clipnorm=1.0),
        accumulation_steps=args.accumulation,
    )
    model = build_model(args.context, args.dim, args.heads, args.blocks, not args.no_recompute)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    before = bits_per_char(model, x_va, y_va)
    # A repeated, shuffled stream of fixed-shape micro-batches (one XLA program);
    # "epochs" here are just reporting intervals of the planned micro-steps.
    train = (
        tf.data.Dataset.from_tensor_slices((x_tr, y_tr))
        .shuffle(len(x_tr), seed=args.seed)
        .repeat()
        .batch(args.micro_batch, drop_remainder=True)
        .prefetch(2)
    )
    epochs = 5
    micro_steps_per_epoch = math.ceil(args.updates * args.accumulation / epochs)
    start = time.perf_counter()
    model.fit(
        train,
        epochs=epochs,
        steps_per_epoch=micro_steps_per_epoch,
        callbacks=[
            tfkit.callbacks.HyperparameterLogger(),
            keras.callbacks.CSVLogger(str(args.output_dir / "history.csv")),
        ],
        verbose=2,
    )
    seconds = time.perf_counter() - start
    after = bits_per_char(model, x_va, y_va)
    text = sample(model, "Return the ", args.context)
    print(f"validation bits/char: {before:.3f} -> {after:.3f} in {seconds:.0f} s "
          f"({int(optimizer.inner_optimizer.iterations)} updates of "
          f"{args.micro_batch}x{args.accumulation} sequences)")
    print("sample:", repr(text))
    return {"bpc_before": before, "bpc_after": after, "seconds": seconds, "sample": text}


if __name__ == "__main__":
    main()
