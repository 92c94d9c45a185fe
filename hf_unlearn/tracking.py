"""Experiment tracking through accelerate's trackers (`log_with`: tensorboard, wandb, mlflow, ...), off by default."""

from __future__ import annotations

from typing import Optional


def check_log_with(log_with: Optional[str]) -> None:
    """Raises `ValueError` naming `log_with` when a requested tracker is unknown or its package is not installed.

    accelerate itself only logs such a tracker at debug level and drops it, so a run would finish without its logs.
    """
    if not log_with:
        return
    from accelerate.tracking import get_available_trackers  # noqa: PLC0415
    from accelerate.utils import LoggerType  # noqa: PLC0415

    available = [str(t.value if hasattr(t, "value") else t) for t in get_available_trackers()]
    name = str(log_with)
    if name == "all":
        return
    if name not in LoggerType.list():
        raise ValueError(
            f"`log_with` is '{name}', which is not an accelerate tracker; choose one of "
            f"{', '.join(LoggerType.list())}."
        )
    if name not in available:
        raise ValueError(
            f"`log_with` is '{name}', but that tracker's package is not installed (available here: "
            f"{', '.join(available) or 'none'}); install it (e.g. `pip install {name}`) or drop `log_with`."
        )


def start_tracking(accelerator, config, method_name: str) -> None:
    """Starts the configured trackers with the run's hyperparameters (`accelerator.init_trackers`)."""
    if not config.log_with:
        return
    check_log_with(config.log_with)
    hyperparameters = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.to_dict().items()}
    accelerator.init_trackers(f"hf_unlearn-{method_name}", config=hyperparameters)


def stop_tracking(accelerator) -> None:
    """Closes the trackers on the main process (`end_training` would also tear down the process group)."""
    if accelerator.is_main_process:
        for tracker in accelerator.trackers:
            tracker.finish()
