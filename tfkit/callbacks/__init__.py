"""Callbacks for ``model.fit`` and custom loops: early stopping, plateau reduction on any
schedule, per-epoch schedules, momentum/beta_1 scheduling, hyperparameter logging, diagnostics,
weight averaging (EMA, SWA),
schedule-free evaluation weights, loss-spike recovery."""

from tfkit.callbacks.backup_and_restore import BackupAndRestore
from tfkit.callbacks.early_stopping import EarlyStopping
from tfkit.callbacks.epoch_scheduler import EpochScheduler
from tfkit.callbacks.hyperparameter_logger import HyperparameterLogger
from tfkit.callbacks.momentum import (
    MomentumScheduler,
    schedule_hyperparameter,
    unschedule_hyperparameter,
)
from tfkit.callbacks.nan_guard import NaNGuard
from tfkit.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau
from tfkit.callbacks.schedule_free import ScheduleFreeEvaluation
from tfkit.callbacks.spike_guard import SpikeGuard
from tfkit.callbacks.update_ratio import UpdateRatioMonitor
from tfkit.callbacks.weight_averaging import WeightAveraging

# ScaledSchedule is a schedule and lives in tfkit.schedules; this alias keeps
# `tfkit.callbacks.ScaledSchedule` (round 2's home) working.
from tfkit.schedules.scaled import ScaledSchedule  # noqa: E402

__all__ = [
    "BackupAndRestore",
    "EarlyStopping",
    "EpochScheduler",
    "HyperparameterLogger",
    "MomentumScheduler",
    "NaNGuard",
    "ReduceLROnPlateau",
    "ScaledSchedule",
    "ScheduleFreeEvaluation",
    "SpikeGuard",
    "UpdateRatioMonitor",
    "WeightAveraging",
    "schedule_hyperparameter",
    "unschedule_hyperparameter",
]
