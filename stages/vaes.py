"""vaes: the profile's old and new VAE. tiny trains both here (one process) and writes their held-out
reconstruction errors (all pixels, objects' pixels) to metrics/vaes.json; xl links its local
pretrained folders into place."""

from pixart import atomic, tracking
from pixart.train.components import link_tree
from pixart.train.vae import train_vae
from stages.common import parse


def main() -> None:
    ctx = parse(__doc__)
    quality = {}
    for name, cfg in ctx.profile.vaes.items():
        out = ctx.paths.vae(name)
        if cfg.path is not None:
            with atomic.folder(out) as tmp:
                link_tree(ctx.settings.path(cfg.path), tmp)
            continue
        sizes = sorted({ctx.profile.pixels(s) for s in ctx.profile.stages.values() if s.vae == name})
        tracking.configure(ctx.settings)
        params = {"profile": ctx.profile_name, "vae": cfg.model_dump(mode="json"), "sizes": sizes}
        # run.json beside the VAE's cache: a re-run after a kill closes the killed attempt's MLflow run
        run_file = ctx.paths.state(f"vae-{name}") / "run.json"
        with tracking.stage_run(f"vae-{name}", params, run_file=run_file) as run:
            quality[name] = train_vae(name, cfg, ctx.profile.train, ctx.paths.train_dataset(ctx.profile),
                                      ctx.paths.heldout_data, sizes, out, run)
        print(f"vae-{name}: held-out reconstruction {quality[name]} -> {out}")
    atomic.write_json(ctx.paths.metrics / "vaes.json", quality)


if __name__ == "__main__":
    main()
