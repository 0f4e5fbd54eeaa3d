"""Activation recomputation (gradient checkpointing) for Keras 3 on TensorFlow.

Backpropagation needs the activations of the forward pass. Keeping all of them
costs memory proportional to depth. Recomputation keeps only the *inputs* of a
block and runs the block's forward pass again when the gradient reaches it:

    memory:  O(n) activations  ->  O(n / k) block inputs + O(k) for one block
    compute: one extra forward pass of each recomputed block (about +1/3 of a
             training step whose backward costs twice its forward)

With ``k = sqrt(n)`` blocks per segment the memory is O(sqrt(n)) (Chen et al.,
2016, "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174).

Four entry points:

* :class:`Recompute` wraps any Keras layer or model (a "block"); use it in
  functional, Sequential and subclassed models, ``model.fit`` (graph and
  ``jit_compile=True``), custom ``tf.function`` loops and under
  ``tf.distribute``.
* :func:`recompute_sequential` splits a stack of layers into segments,
  like PyTorch's ``torch.utils.checkpoint.checkpoint_sequential``.
* :func:`recompute` is the function form for custom code.
* :func:`plan` measures each block and chooses what to recompute (and, inside
  a block, what to save) to fit a memory budget at the least extra compute.

Guarantees (all tested): gradients equal those without recomputation;
BatchNormalization moving statistics (any Keras variable the block assigns) are
updated once per step; Dropout and every other Keras random op driven by a
``SeedGenerator`` draws the same mask in the recomputed pass, and the seed
advances once. TensorFlow stateful random ops (``tf.random.uniform`` without a
seed, ``tf.random.Generator``) and raw ``tf.Variable`` assignments inside a
block cannot be replayed; tfkit warns, naming the layer, when it traces one.

Why not ``keras.RematScope`` / ``keras.remat``: on the TensorFlow backend they
pass keyword arguments (``training=``) to ``tf.custom_gradient``, which
raises in graph mode, i.e. inside ``model.fit`` (keras-team/keras#21207).
"""

from tfkit.recompute.layer import Recompute, recompute, recompute_sequential
from tfkit.recompute.planning import RecomputePlan, plan

__all__ = ["Recompute", "RecomputePlan", "plan", "recompute", "recompute_sequential"]
