"""The trainer's configuration (``TrainerConfig``) and its building from the settings: kept out
of ``trainer.core`` so that ``abgate trainer`` refuses a bad flag before it imports the converters
(skl2onnx and scikit-learn take seconds to import)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from abgate.settings import TrainerSettings
from abgate.trainer.base import BaseDataset, load_base_dataset

# Holdout metrics the no-worse check may use -> True when higher is better.
NO_WORSE_METRICS = {"accuracy": True, "precision": True, "recall": True, "fpr": False}


@dataclass(frozen=True)
class TrainerConfig:
    window_days: float = 7.0
    min_rows: int = 200
    holdout_share: float = 0.2
    max_regression: float = 0.01
    max_attempts: int = 3
    require_approval: bool = False
    claimer: str = ""
    wait_for_rows: float = 0.0  # seconds after its creation a request may wait for rows
    recheck_interval: float = 60.0  # seconds between looks at a waiting request
    # The holdout metric of the no-worse check (NO_WORSE_METRICS), and rows merged into the
    # training side of every retrain (--base-dataset).
    no_worse_metric: str = "accuracy"
    base: BaseDataset | None = None

    def __post_init__(self) -> None:
        if self.no_worse_metric not in NO_WORSE_METRICS:
            raise ValueError(
                f"--no-worse-metric must be one of {', '.join(NO_WORSE_METRICS)}, not "
                f"{self.no_worse_metric!r}"
            )
        if not self.window_days > 0:
            raise ValueError("--window-days must be positive")
        if self.min_rows < 2:
            raise ValueError("--min-rows must be at least 2")
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError("--holdout-share must be between 0 and 1 (exclusive)")
        if not 0.0 <= self.max_regression <= 1.0:
            raise ValueError("--max-regression must be between 0 and 1")
        if self.max_attempts < 1:
            raise ValueError("--max-attempts must be at least 1")
        if not self.wait_for_rows >= 0:
            raise ValueError("--wait-for-rows must be 0 or more seconds")
        if not self.recheck_interval > 0:
            raise ValueError("--recheck-interval must be positive")


def config_of(settings: TrainerSettings) -> TrainerConfig:
    """The core's configuration; ValueError naming the flag when a value is out of range."""
    if settings.approve not in ("auto", "manual"):
        raise ValueError(f"--approve must be auto or manual, not {settings.approve!r}")
    base = load_base_dataset(settings.base_dataset) if settings.base_dataset else None
    return TrainerConfig(
        base=base,
        no_worse_metric=settings.no_worse_metric,
        window_days=settings.window_days,
        min_rows=settings.min_rows,
        holdout_share=settings.holdout_share,
        max_regression=settings.max_regression,
        max_attempts=settings.max_attempts,
        wait_for_rows=settings.wait_for_rows,
        recheck_interval=settings.recheck_interval,
        require_approval=settings.approve == "manual",
        claimer=settings.trainer_id or f"{socket.gethostname()}-{os.getpid()}",
    )
