"""Per-GPU memory of training a PixArt-Sigma transformer: model states under ZeRO, and activations.

Model states (Rajbhandari et al., "ZeRO", 2020) for Psi parameters, data-parallel degree N:

    bf16 mixed precision: params 2 Psi, grads 2 Psi, optimizer K Psi with K = 12
                          (fp32 master copy 4 + first moment 4 + second moment 4)
    fp32:                 params 4 Psi, grads 4 Psi, optimizer K Psi with K = 8 (two moments)

    ZeRO-0  params + grads + optimizer
    ZeRO-1  params + grads + optimizer / N
    ZeRO-2  params + (grads + optimizer) / N
    ZeRO-3  (params + grads + optimizer) / N

CAME (the xl optimizer) factors its second moment only for tensors of two or more dimensions; under
DeepSpeed it is handed flat 1-D fp32 partitions, so it keeps both moments in full, like AdamW: one
K serves both optimizers.

Activations, per sample, with T tokens (T = (R / 8 / patch)^2: the VAE downsamples 8x, the patch
embedding ``patch``x), hidden size h, L text tokens, counted as the tensors autograd saves in one
block of diffusers' PixArt block (adaLN-single, self-attention, cross-attention, GELU MLP x4), in
units of T*h elements:

    self-attention   norm input 1, norm output 1, modulated input 1, q k v 3, attention output 1
                     (the output projection reads it as a view), output before the gate 1  =  8
    cross-attention  input 1, q 1, attention output 1                                     =  3
    MLP              norm input 1, norm output 1, modulated input 1, fc1 output 4,
                     GELU output 4, output before the gate 1                                = 12

so BLOCK_ACTIVATIONS = 23 T*h elements per block, plus 3 L*h for the text features that the
cross-attention projects and their keys and values (the small rest: layer-norm statistics, the
attention log-sum-exp, the modulation vectors). tests/test_infra_plan.py checks this count
against the tensors autograd saves in a real block. Attention scores are not stored: scaled_dot_product_attention (flash or
memory-efficient kernels) recomputes them. Without gradient checkpointing all ``depth`` blocks keep
their activations; with it, each block keeps only its input (T*h) and one block at a time is
recomputed during backward, so the peak is depth*T*h + one block + the incoming and outgoing
activation gradients (2 T*h).

Not counted: the T5 encoder and the VAE (the trainer reads the feature cache, they never load),
the EMA (an fp32 copy kept in host memory by ``pixart.train.ema``), DeepSpeed's communication
buckets (``reduce_bucket_size``, 5e8 elements by default), ZeRO-3's live-parameter buffers, the
CUDA context and allocator fragmentation: keep a few GiB of head room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pixart.models.specs import ModelSpec

Precision = Literal["fp32", "bf16"]

VAE_DOWNSAMPLE = 8
TEXT_TOKENS = 300
BLOCK_ACTIVATIONS = 23  # T*h elements saved per block, derived in the module docstring
ACTIVATION_GRADIENTS = 2  # T*h: the gradient flowing into and out of the block in backward

# bytes per parameter: (param, grad, optimizer states)
_STATE_BYTES: dict[str, tuple[int, int, int]] = {"bf16": (2, 2, 12), "fp32": (4, 4, 8)}
_ACTIVATION_BYTES: dict[str, int] = {"bf16": 2, "fp32": 4}


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU bytes of one training configuration."""

    tokens: int
    params: int
    grads: int
    optimizer_states: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer_states + self.activations


def token_count(resolution: int, patch_size: int) -> int:
    """Image tokens of a square ``resolution`` px image: (R / 8 / patch)^2."""
    side = VAE_DOWNSAMPLE * patch_size
    if resolution <= 0 or resolution % side:
        raise ValueError(
            f"resolution: {resolution} px is not a positive multiple of {side} (VAE 8 x patch {patch_size})"
        )
    return (resolution // side) ** 2


def count_parameters(spec: ModelSpec) -> int:
    """Trainable parameters of the transformer of ``spec``, counted on a model built on the meta
    device (no memory, no weights): the architecture itself is the source, not a formula."""
    import torch

    from pixart.models.transformer import build_transformer

    # The parameter count does not depend on the sample size: the PE is a buffer.
    with torch.device("meta"):
        model = build_transformer(spec, sample_size=128, interpolation_scale=1.0)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_state_bytes(n_params: int, zero_stage: int, num_gpus: int, precision: Precision) -> tuple[int, int, int]:
    """(params, grads, optimizer states) bytes per GPU under ZeRO ``zero_stage`` with ``num_gpus``
    data-parallel ranks."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage: {zero_stage} is not 0, 1, 2 or 3")
    if num_gpus < 1:
        raise ValueError(f"num_gpus: {num_gpus} must be >= 1")
    if precision not in _STATE_BYTES:
        raise ValueError(f"precision: {precision!r} is not one of {sorted(_STATE_BYTES)}")
    param_b, grad_b, optim_b = _STATE_BYTES[precision]

    def per_gpu(nbytes: int, partitioned: bool) -> int:
        return -(-nbytes // num_gpus) if partitioned else nbytes

    return (
        per_gpu(n_params * param_b, zero_stage >= 3),
        per_gpu(n_params * grad_b, zero_stage >= 2),
        per_gpu(n_params * optim_b, zero_stage >= 1),
    )


def block_activation_elements(hidden_size: int, tokens: int, text_tokens: int = TEXT_TOKENS) -> int:
    """Elements autograd saves for backward in one transformer block, per sample."""
    return BLOCK_ACTIVATIONS * tokens * hidden_size + 3 * text_tokens * hidden_size


def activation_bytes(
    spec: ModelSpec, tokens: int, micro_batch: int, precision: Precision, grad_checkpointing: bool
) -> int:
    """Peak activation bytes per GPU of a forward + backward at ``micro_batch`` samples."""
    if micro_batch < 1:
        raise ValueError(f"micro_batch: {micro_batch} must be >= 1")
    h = spec.hidden_size
    block = block_activation_elements(h, tokens)
    if grad_checkpointing:
        elements = spec.depth * tokens * h + block
    else:
        elements = spec.depth * block
    elements += ACTIVATION_GRADIENTS * tokens * h
    return micro_batch * elements * _ACTIVATION_BYTES[precision]


def estimate(
    spec: ModelSpec,
    resolution: int,
    zero_stage: int,
    *,
    num_gpus: int = 1,
    micro_batch: int = 1,
    precision: Precision = "bf16",
    grad_checkpointing: bool = True,
    n_params: int | None = None,
) -> MemoryEstimate:
    """Per-GPU memory of training ``spec`` on square ``resolution`` px images (pass ``n_params``
    from ``count_parameters`` to estimate many configurations without rebuilding the model)."""
    n_params = count_parameters(spec) if n_params is None else n_params
    tokens = token_count(resolution, spec.patch_size)
    params, grads, optimizer_states = model_state_bytes(n_params, zero_stage, num_gpus, precision)
    activations = activation_bytes(spec, tokens, micro_batch, precision, grad_checkpointing)
    return MemoryEstimate(tokens, params, grads, optimizer_states, activations)
