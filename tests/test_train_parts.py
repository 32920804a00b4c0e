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



class _Tiny(torch.nn.Module):
    """A weight, a float buffer and a step counter: the three kinds of tensor a state dict holds."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def set(self, value: float) -> None:
        with torch.no_grad():
            self.weight.fill_(value)
            self.running.fill_(-value)
            self.count.fill_(int(value))


def test_ema_follows_its_warm_up_then_its_decay_by_hand_and_copies_counters() -> None:
    decay, values = 0.5, [1.0, 3.0, -2.0, 4.0, 0.5, 2.0, 7.0, -1.0, 5.0, 6.0, 2.5]
    model = _Tiny()
    ema = EMA(model, decay=decay)
    expected, used = 0.0, []  # the shadow starts at the model's weights: zeros
    for n, value in enumerate(values, start=1):
        model.set(value)
        ema.update(model)
        d = min(decay, (1 + n) / (10 + n))  # the warm-up reaches 0.5 at n = 8: both branches run
        used.append(d)
        expected = d * expected + (1 - d) * value
        assert ema.shadow["weight"].tolist() == pytest.approx([expected] * 3, abs=1e-6), n
        assert ema.shadow["running"].tolist() == pytest.approx([-expected] * 2, abs=1e-6), n
        assert ema.shadow["count"].item() == int(value), n  # counters are copied, not averaged
    assert used[0] == pytest.approx(2 / 11) and used[-1] == decay
    assert ema.updates == len(values)

    fresh = _Tiny()
    ema.copy_to(fresh)
    assert fresh.weight.tolist() == pytest.approx([expected] * 3, abs=1e-6)
    assert fresh.running.tolist() == pytest.approx([-expected] * 2, abs=1e-6)
    assert fresh.count.item() == int(values[-1]) and fresh.count.dtype == torch.long
