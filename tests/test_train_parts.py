"""Trainer parts that need no process group: the DeepSpeed config and the EMA."""

import pytest
import torch

from pixart.config import load_profile
from pixart.train.ds_config import deepspeed_config
from pixart.train.ema import EMA


def test_xl_config_lets_zero_take_came_and_splits_the_global_batch():
    _, xl = load_profile("xl")
    config = deepspeed_config(xl.train, batch_size=1024, world_size=8)
    assert xl.train.optimizer == "came" and config["zero_allow_untested_optimizer"] is True
    assert config["train_micro_batch_size_per_gpu"] * 8 * config["gradient_accumulation_steps"] == 1024
    assert config["bf16"]["enabled"] and config["zero_optimization"]["stage"] == 2
    with pytest.raises(ValueError, match="batch_size: 1000 is not divisible by world size 3"):
        deepspeed_config(xl.train, batch_size=1000, world_size=3)


def test_ema_follows_the_model_to_the_engines_device_and_back():
    model = torch.nn.Linear(4, 4)
    ema = EMA(model, decay=0.5)
    model.to("meta")  # what deepspeed.initialize does to a CPU-built model on a GPU machine
    ema.update(model)
    assert all(v.device.type == "meta" for v in ema.shadow.values())
    target = torch.nn.Linear(4, 4).to(torch.float64)
    ema.shadow = {k: torch.ones_like(v, device="cpu") for k, v in ema.shadow.items()}
    ema.copy_to(target)
    assert target.weight.dtype == torch.float64 and torch.equal(target.weight, torch.ones(4, 4, dtype=torch.float64))

