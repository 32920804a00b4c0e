"""Exponential moving average of the trained weights; the EMA is what a stage exports."""

from __future__ import annotations

import torch


class EMA:
    """EMA with the usual warm-up ``min(decay, (1 + n) / (10 + n))``: a short stage is not dominated
    by its weak input's weights, a long one converges to ``decay``. ``warmup`` False keeps ``decay``
    from the first update (LCM's target network)."""

    def __init__(self, model: torch.nn.Module, decay: float, *, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        state = model.state_dict()
        for k, v in state.items():
            if self.shadow[k].device != v.device:  # the engine moved the model after the EMA was taken
                self.shadow[k] = self.shadow[k].to(v.device)
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        # one fused kernel over all tensors: the per-tensor loop cost ~4 % of a tiny CPU step
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].detach().float() for k in floats], 1 - d)

    def copy_to(self, model: torch.nn.Module) -> None:
        target = model.state_dict()
        model.load_state_dict({k: v.to(target[k].device, target[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
