"""Conversion between official PixArt-sigma checkpoints (``PixArtMS`` state dicts in a ``.pth``) and ours.

Key map, official -> ours (``i`` = block index; ``.weight`` / ``.bias`` follow each module name)::

    x_embedder.proj                  pos_embed.proj
    t_embedder.mlp.0 / .mlp.2        adaln_single.emb.timestep_embedder.linear_1 / .linear_2
    t_block.1                        adaln_single.linear
    y_embedder.y_proj.fc1 / .fc2     caption_projection.linear_1 / .linear_2
    final_layer.linear               proj_out
    final_layer.scale_shift_table    scale_shift_table
    blocks.i.scale_shift_table       transformer_blocks.i.scale_shift_table
    blocks.i.attn.qkv                transformer_blocks.i.attn1.to_q, to_k, to_v (rows split in 3, q k v)
    blocks.i.attn.proj               transformer_blocks.i.attn1.to_out.0
    blocks.i.attn.sr                 transformer_blocks.i.attn1.processor.conv  (KV compression conv)
    blocks.i.attn.norm               transformer_blocks.i.attn1.processor.norm  (KV compression LayerNorm)
    blocks.i.cross_attn.q_linear     transformer_blocks.i.attn2.to_q
    blocks.i.cross_attn.kv_linear    transformer_blocks.i.attn2.to_k, to_v (rows split in 2, k v)
    blocks.i.cross_attn.proj         transformer_blocks.i.attn2.to_out.0
    blocks.i.mlp.fc1 / .fc2          transformer_blocks.i.ff.net.0.proj / .ff.net.2

Not in our model (``OFFICIAL_EXTRAS``): ``pos_embed`` (the official model recomputes the PE for each
grid) and ``y_embedder.y_embedding`` (a buffer; Sigma and diffusers use the T5 null-caption embedding).
They are returned beside the converted dict so that official -> ours -> official is exact. Micro-condition
(``csize_embedder``, ``ar_embedder``) and qk-norm keys are rejected: PixArt-Sigma uses neither.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pixart import atomic
from pixart.models.specs import ModelSpec
from pixart.models.transformer import PixArtSigmaTransformer, build_transformer

OFFICIAL_EXTRAS = ("pos_embed", "y_embedder.y_embedding")

_GLOBAL = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "adaln_single.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "adaln_single.emb.timestep_embedder.linear_2",
    "t_block.1": "adaln_single.linear",
    "y_embedder.y_proj.fc1": "caption_projection.linear_1",
    "y_embedder.y_proj.fc2": "caption_projection.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.scale_shift_table": "scale_shift_table",
}
_BLOCK = {
    "scale_shift_table": "scale_shift_table",
    "attn.proj": "attn1.to_out.0",
    "attn.sr": "attn1.processor.conv",
    "attn.norm": "attn1.processor.norm",
    "cross_attn.q_linear": "attn2.to_q",
    "cross_attn.proj": "attn2.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
# fused official projections -> our separate ones, in row order
_FUSED = {
    "attn.qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
    "cross_attn.kv_linear": ("attn2.to_k", "attn2.to_v"),
}
_OFFICIAL_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$|blocks\.(\d+)\.(scale_shift_table)$")
_OURS_BLOCK = re.compile(
    r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$|transformer_blocks\.(\d+)\.(scale_shift_table)$"
)

StateDict = dict[str, torch.Tensor]


def _rename(key: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if key == src:
            return dst
        if key.startswith(src + ".") and key.count(".") == src.count(".") + 1:
            return dst + key[len(src) :]
    return None


def _split_block_key(match: re.Match[str]) -> tuple[int, str, str]:
    """(block index, module path inside the block, parameter suffix or '')."""
    if match.group(1) is not None:
        return int(match.group(1)), match.group(2), "." + match.group(3)
    return int(match.group(4)), match.group(5), ""


def official_to_ours(official: StateDict) -> tuple[StateDict, StateDict]:
    """Official PixArtMS state dict -> (our transformer state dict, the official extras we do not use)."""
    ours: StateDict = {}
    extras = {k: v for k, v in official.items() if k in OFFICIAL_EXTRAS}
    unknown = []
    for key, value in official.items():
        if key in OFFICIAL_EXTRAS:
            continue
        match = _OFFICIAL_BLOCK.match(key)
        if match is None:
            new = _rename(key, _GLOBAL)
            if new is None:
                unknown.append(key)
            else:
                ours[new] = value
            continue
        index, module, suffix = _split_block_key(match)
        prefix = f"transformer_blocks.{index}."
        if module in _FUSED:
            targets = _FUSED[module]
            for target, part in zip(targets, value.chunk(len(targets), dim=0), strict=True):
                ours[prefix + target + suffix] = part.clone()
        elif module in _BLOCK:
            ours[prefix + _BLOCK[module] + suffix] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"official checkpoint has keys PixArt-Sigma does not use (micro-conditions, qk-norm?): {unknown}"
        )
    return ours, extras


def ours_to_official(ours: StateDict, extras: StateDict | None = None) -> StateDict:
    """Our transformer state dict (+ the extras ``official_to_ours`` returned) -> official PixArtMS."""
    inverse_global = {v: k for k, v in _GLOBAL.items()}
    inverse_block = {v: k for k, v in _BLOCK.items()}
    fused_parts = {part: (fused, i) for fused, parts in _FUSED.items() for i, part in enumerate(parts)}
    official: StateDict = dict(extras or {})
    pending: dict[str, list[torch.Tensor | None]] = {}
    unknown = []
    for key, value in ours.items():
        match = _OURS_BLOCK.match(key)
        if match is None:
            old = _rename(key, inverse_global)
            if old is None:
                unknown.append(key)
            else:
                official[old] = value
            continue
        index, module, suffix = _split_block_key(match)
        prefix = f"blocks.{index}."
        if module in fused_parts:
            fused, position = fused_parts[module]
            slots = pending.setdefault(prefix + fused + suffix, [None] * len(_FUSED[fused]))
            slots[position] = value
        elif module in inverse_block:
            official[prefix + inverse_block[module] + suffix] = value
        else:
            unknown.append(key)
    incomplete = [key for key, slots in pending.items() if any(s is None for s in slots)]
    if unknown or incomplete:
        raise KeyError(
            f"cannot convert to official: unknown keys {unknown}, incomplete fused projections {incomplete}"
        )
    official.update({key: torch.cat(slots, dim=0) for key, slots in pending.items()})
    return official


def kv_compress_layers_of(official: StateDict) -> list[int]:
    """Blocks of an official checkpoint that carry KV compression (``attn.sr``)."""
    return sorted(int(k.split(".")[1]) for k in official if re.fullmatch(r"blocks\.\d+\.attn\.sr\.weight", k))


def depth_of(official: StateDict) -> int:
    """Number of transformer blocks in an official checkpoint."""
    return len({k.split(".")[1] for k in official if k.startswith("blocks.")})


def load_official(path: str | Path) -> StateDict:
    """The state dict of an official ``.pth`` (``{"state_dict": ...}`` or flat), without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a PixArt state dict (expected a dict of tensors under 'state_dict')")
    return state


def save_official(state: StateDict, path: str | Path) -> None:
    """Write ``{"state_dict": state}`` as the official code expects, atomically (torch.save: the
    official loader reads .pth)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save({"state_dict": {k: v.contiguous() for k, v in state.items()}}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


EXTRAS_FILE = "official_extras.safetensors"


def official_transformer(
    pth: str | Path, spec: ModelSpec, *, sample_size: int, interpolation_scale: float
) -> tuple[PixArtSigmaTransformer, StateDict]:
    """An official ``.pth`` as our transformer (KV layers read from the checkpoint), and the official
    tensors it has no place for."""
    official = load_official(pth)
    if depth_of(official) != spec.depth:
        raise ValueError(
            f"{pth} has {depth_of(official)} blocks but spec {spec.name!r} has depth {spec.depth}"
        )
    ours, extras = official_to_ours(official)
    model = build_transformer(
        spec,
        sample_size=sample_size,
        interpolation_scale=interpolation_scale,
        kv_compress_layers=kv_compress_layers_of(official),
    )
    # the PE buffer is recomputed, never stored: strict on every parameter
    model.load_state_dict(ours, strict=True)
    return model, extras


def from_official(
    pth: str | Path, out_dir: str | Path, spec: ModelSpec, *, sample_size: int, interpolation_scale: float
) -> PixArtSigmaTransformer:
    """Convert an official ``.pth`` into a saved ``PixArtSigmaTransformer`` folder; the unused
    official tensors go to ``official_extras.safetensors`` beside it."""
    model, extras = official_transformer(
        pth, spec, sample_size=sample_size, interpolation_scale=interpolation_scale
    )
    with atomic.folder(Path(out_dir)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if extras:
            save_file({k: v.contiguous() for k, v in extras.items()}, str(tmp / EXTRAS_FILE))
    return model


def to_official(model_dir: str | Path, out: str | Path) -> StateDict:
    """Write a saved transformer (or a pipeline folder's ``transformer/``) as an official ``.pth``."""
    model_dir = Path(model_dir)
    if (model_dir / "model_index.json").is_file():
        model_dir = model_dir / "transformer"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is neither a transformer folder nor a pipeline folder")
    model = PixArtSigmaTransformer.from_pretrained(model_dir)
    extras_path = model_dir / EXTRAS_FILE
    extras = load_file(str(extras_path)) if extras_path.is_file() else None
    official = ours_to_official(model.state_dict(), extras)
    save_official(official, out)
    return official
