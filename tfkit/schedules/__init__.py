"""Learning-rate schedules: the complete family, composable, reference-exact, XLA-safe.

Every class is a ``keras.optimizers.schedules.LearningRateSchedule``
registered for Keras serialization under package ``tfkit``; pass one as an
optimizer's ``learning_rate``. ``Warmup``, ``Join`` and ``Product`` compose
any schedules; ``get_scheduler`` builds Hugging Face's named schedules.

Semantics (the same for every schedule):

* ``step`` is the number of real optimizer updates so far, starting at 0.
* The step contract: Python and NumPy ints and floats and int/float tensors
  are evaluated in float64 (a Python float never passes through float32), up
  to 2**53 exactly. ``bool``, complex, ``str`` and ``None`` raise ``TypeError``
  naming ``step``; a negative or non-finite Python step raises ``ValueError``;
  a negative or non-finite tensor step raises ``InvalidArgumentError`` naming
  ``step`` when the graph runs (under ``jit_compile=True``, where XLA drops
  assertions, the value is NaN instead). A step is never clamped.
* Where the formula gives 0 past the end, the value is exactly 0 (XLA too).
* A schedule that starts later (after a ``Warmup``, or after a ``Join``
  boundary) sees ``step - start``: ``decay_steps`` never include a warmup.
* Finite schedules hold their final value past their end.
* Values are float32, or float64 when the initial rate is float64 or
  ``dtype="float64"``; step arithmetic runs in float64 (exact integer steps).
"""

from tfkit.schedules.constant import Constant
from tfkit.schedules.cosine import CosineDecay, CosineDecayRestarts
from tfkit.schedules.cyclic import Cyclic
from tfkit.schedules.exponential import ExponentialDecay, InverseTimeDecay, NaturalExpDecay
from tfkit.schedules.huggingface import get_scheduler
from tfkit.schedules.inverse_sqrt import InverseSqrtDecay
from tfkit.schedules.join import Join
from tfkit.schedules.linear_cosine import LinearCosineDecay
from tfkit.schedules.one_cycle import OneCycle, OneCycleMomentum
from tfkit.schedules.piecewise import MultiStepDecay, PiecewiseConstantDecay
from tfkit.schedules.polynomial import PolynomialDecay
from tfkit.schedules.product import Product
from tfkit.schedules.scaled import ScaledSchedule
from tfkit.schedules.swa import SWALR
from tfkit.schedules.warmup import Warmup
from tfkit.schedules.warmup_stable_decay import WarmupStableDecay

__all__ = [
    "Constant",
    "CosineDecay",
    "CosineDecayRestarts",
    "Cyclic",
    "ExponentialDecay",
    "InverseSqrtDecay",
    "InverseTimeDecay",
    "Join",
    "LinearCosineDecay",
    "MultiStepDecay",
    "NaturalExpDecay",
    "OneCycle",
    "OneCycleMomentum",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "Product",
    "SWALR",
    "ScaledSchedule",
    "Warmup",
    "WarmupStableDecay",
    "get_scheduler",
]
