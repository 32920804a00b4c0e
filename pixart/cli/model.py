"""``pixart model summary``, ``pixart convert`` and ``pixart generate``."""

from __future__ import annotations

from pathlib import Path

import typer

model_app = typer.Typer(help="Model specs.", no_args_is_help=True)


@model_app.command("summary")
def summary(spec: str = typer.Option("xl", help="Model spec: xl, tiny or debug.")) -> None:
    """Print a spec's shape and parameter counts (built on the meta device: no memory, no init)."""
    import torch

    from pixart.models.specs import get_spec
    from pixart.models.transformer import build_transformer

    model_spec = get_spec(spec)
    with torch.device("meta"):
        plain = build_transformer(model_spec, sample_size=32, interpolation_scale=1.0)
        compressed = build_transformer(
            model_spec,
            sample_size=32,
            interpolation_scale=1.0,
            kv_compress_layers=model_spec.kv_compress_layers,
        )

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    typer.echo(
        f"spec {model_spec.name}: depth {model_spec.depth}, hidden {model_spec.hidden_size} "
        f"({model_spec.num_heads} heads x {model_spec.head_dim}), patch {model_spec.patch_size}, "
        f"caption {model_spec.caption_channels}\n"
        f"parameters: {count(plain):,}\n"
        f"parameters with KV compression in layers {list(model_spec.kv_compress_layers)}: {count(compressed):,}"
    )


def convert(
    from_official: Path | None = typer.Option(
        None, "--from-official", help="Official PixArt-sigma .pth to read."
    ),
    to: Path | None = typer.Option(None, "--to", help="Transformer folder to write (with --from-official)."),
    spec: str = typer.Option("xl", help="Model spec of the checkpoint (with --from-official)."),
    resolution: int = typer.Option(1024, help="Nominal resolution in px the checkpoint was trained at."),
    vae_factor: int = typer.Option(8, help="VAE downsampling factor: latent side = resolution / this."),
    to_official: Path | None = typer.Option(
        None, "--to-official", help="Transformer or pipeline folder to read."
    ),
    out: Path | None = typer.Option(None, "--out", help="Official .pth to write (with --to-official)."),
) -> None:
    """Convert official PixArt-sigma weights to ours (--from-official X.pth --to DIR) or back
    (--to-official DIR --out X.pth)."""
    if (from_official is None) == (to_official is None):
        raise typer.BadParameter("give exactly one of --from-official and --to-official")
    from pixart.models import convert as conversion

    if from_official is not None:
        if to is None:
            raise typer.BadParameter("--from-official needs --to DIR")
        from pixart.models.specs import get_spec
        from pixart.models.transformer import pe_interpolation

        model = conversion.from_official(
            from_official,
            to,
            get_spec(spec),
            sample_size=resolution // vae_factor,
            interpolation_scale=pe_interpolation(resolution),
        )
        typer.echo(f"wrote {to} (KV compression in layers {model.config.kv_compress_layers})")
    else:
        if out is None:
            raise typer.BadParameter("--to-official needs --out X.pth")
        state = conversion.to_official(to_official, out)
        typer.echo(f"wrote {out} ({len(state)} tensors)")


def generate(
    model: Path = typer.Option(..., help="Pipeline folder."),
    prompt: str = typer.Option(..., help="Text prompt."),
    steps: int | None = typer.Option(None, help="Sampler steps (default: DPM-Solver 20, an LCM stage 4; DMD: 1)."),
    cfg: float = typer.Option(4.5, help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
    height: int | None = typer.Option(None, help="Image height in px (default: the model's sample size)."),
    width: int | None = typer.Option(None, help="Image width in px (default: the model's sample size)."),
    out: Path = typer.Option(..., help="PNG file to write."),
    precision: str = typer.Option(
        "fp32", help="fp32 | bf16: text encoder and transformer dtype (bf16 halves T5-XXL); the VAE stays fp32."
    ),
) -> None:
    """Render one image from a saved pipeline with its stage's sampler (a DMD checkpoint in one step, an
    LCM one in --steps without CFG), on the settings' device (PIXART_DEVICE)."""
    import os

    from pixart.diffusion.sampling import DEFAULT_STEPS
    from pixart.diffusion.stage_sampler import StageSampler
    from pixart.models.builders import precision_dtype
    from pixart.models.pipeline import load_pipeline

    try:
        precision_dtype(precision)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--precision") from None
    pipeline = load_pipeline(model, precision=precision)
    sampler = StageSampler.of(model)
    steps = sampler.steps(steps, DEFAULT_STEPS)
    typer.echo(f"sampler: {sampler.describe(steps, cfg)}")
    image = sampler.sample(pipeline, [prompt], steps=steps, cfg=cfg, seed=seed, height=height, width=width)[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, out)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the model commands to the ``pixart`` app."""
    app.add_typer(model_app, name="model")
    app.command("convert")(convert)
    app.command("generate")(generate)
