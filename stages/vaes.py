"""vaes: the profile's old and new VAE. tiny trains both here (one process) and writes their held-out
reconstruction errors (all pixels, objects' pixels) to metrics/vaes.json; xl links its local
pretrained folders into place."""

from pixart import atomic, tracking
from pixart.data.format import dataset_version
from pixart.train.checkpoint import run_key
from pixart.train.components import link_tree
from pixart.train.vae import VAETrainer
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
        dataset = ctx.paths.train_dataset(ctx.profile)
        # the resumable state is keyed like a stage's: a changed VAE config or dataset never resumes it
        identity = {"profile": ctx.profile_name, "vae": cfg.model_dump(mode="json"), "sizes": sizes,
                    "train": ctx.profile.train.model_dump(mode="json"), "data": dataset_version(dataset)}
        trainer = VAETrainer(name, cfg, ctx.profile.train, dataset, ctx.paths.heldout_data, sizes, out,
                             ctx.paths.state(f"vae-{name}") / run_key(identity), ctx.profile_name)
        quality[name] = trainer.run()
        print(f"vae-{name}: held-out reconstruction {quality[name]} -> {out}")
    atomic.write_json(ctx.paths.metrics / "vaes.json", quality)


if __name__ == "__main__":
    main()
