"""The DeepSpeed config of a stage, derived from params (never written by hand per stage)."""

from __future__ import annotations

from typing import Any

from pixart.config import TrainDefaults


def deepspeed_config(train: TrainDefaults, batch_size: int, world_size: int) -> dict[str, Any]:
    """``batch_size`` is the global batch: micro-batch x world size x accumulation."""
    per_step = world_size * train.grad_accum
    if batch_size % per_step:
        raise ValueError(
            f"batch_size: {batch_size} is not divisible by world size {world_size} x "
            f"grad_accum {train.grad_accum}"
        )
    return {
        "train_batch_size": batch_size,
        "train_micro_batch_size_per_gpu": batch_size // per_step,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        # ZeRO refuses client optimizers it has not tested unless told; CAME (the official choice)
        # keeps factored states per parameter and partitions like Adam's
        "zero_allow_untested_optimizer": train.optimizer != "adamw",
        # our own logging goes to MLflow; DeepSpeed's console prints would only repeat it
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
