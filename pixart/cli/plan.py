"""`pixart plan-memory` and `pixart ds-config`: size a GPU run before renting the GPUs."""

from __future__ import annotations

import json
from typing import Annotated

import typer

_GIB = 2**30
# the paper's three high-resolution stages
_RESOLUTIONS = [1024, 2048, 4096]


def plan_memory(
    spec: Annotated[str, typer.Option(help="Model spec: xl, tiny or debug.")] = "xl",
    resolution: Annotated[
        list[int] | None, typer.Option(help="Square image side in px; repeat for several columns.")
    ] = None,
    zero_stage: Annotated[int, typer.Option(min=0, max=3, help="DeepSpeed ZeRO stage 0-3.")] = 2,
    num_gpus: Annotated[int, typer.Option(min=1, help="Data-parallel ranks (GPUs in all nodes).")] = 1,
    batch: Annotated[int, typer.Option(min=1, help="Micro-batch per GPU.")] = 1,
    precision: Annotated[str, typer.Option(help="bf16 | fp32.")] = "bf16",
    grad_checkpointing: Annotated[bool, typer.Option(help="Gradient checkpointing of every block.")] = True,
) -> None:
    """Print a per-GPU memory estimate (GiB) of training SPEC: params, grads and optimizer states
    partitioned by ZeRO, and activations. T5 and the VAE are not loaded (cached features)."""
    resolution = resolution or _RESOLUTIONS
    from rich.console import Console
    from rich.table import Table

    from pixart.models.specs import get_spec
    from pixart.train import memory

    try:
        model_spec = get_spec(spec)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0]), param_hint="--spec") from None
    n_params = memory.count_parameters(model_spec)
    try:
        plans = [
            memory.estimate(
                model_spec, r, zero_stage, num_gpus=num_gpus, micro_batch=batch, precision=precision,
                grad_checkpointing=grad_checkpointing, n_params=n_params,
            )
            for r in resolution
        ]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    table = Table(
        title=f"{spec}: {n_params / 1e6:.1f} M params, ZeRO-{zero_stage}, {num_gpus} GPU(s), "
        f"micro-batch {batch}, {precision}, grad checkpointing {'on' if grad_checkpointing else 'off'}"
    )
    table.add_column("GiB per GPU")
    for r in resolution:
        table.add_column(f"{r} px", justify="right")
    table.add_row("tokens", *(str(p.tokens) for p in plans))
    for field in ("params", "grads", "optimizer_states", "activations", "total"):
        table.add_row(field.replace("_", " "), *(f"{getattr(p, field) / _GIB:.2f}" for p in plans))
    Console(width=120).print(table)


def ds_config(
    stage: Annotated[str, typer.Option(help="Stage name from params.yaml.")],
    profile: Annotated[str | None, typer.Option(help="params.yaml profile (default: its 'profile').")] = None,
    num_gpus: Annotated[int | None, typer.Option(min=1, help="GPUs per node (default: the stage's).")] = None,
    num_nodes: Annotated[int, typer.Option(min=1, help="Nodes.")] = 1,
) -> None:
    """Print the DeepSpeed config that the trainer of STAGE builds for this world size, as JSON."""
    from pixart.config import load_profile
    from pixart.train.ds_config import deepspeed_config

    name, prof = load_profile(profile)
    if stage not in prof.stages:
        raise typer.BadParameter(f"no stage '{stage}' in profile '{name}' (have {', '.join(prof.stages)})")
    cfg = prof.stages[stage]
    world = (num_gpus or cfg.num_gpus) * num_nodes
    try:
        config = deepspeed_config(prof.train, cfg.batch_size, world)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(json.dumps(config, indent=2))


def register(app: typer.Typer) -> None:
    app.command("plan-memory")(plan_memory)
    app.command("ds-config")(ds_config)
