"""prepare-data: the training and held-out datasets (generated for tiny, imported for xl)."""

from pixart.data.format import load_dataset
from pixart.data.generate import generate_dataset, spec_from_generator
from stages.common import parse


def main() -> None:
    ctx = parse(__doc__)
    data = ctx.profile.data
    if data.source == "folder":
        entries = load_dataset(ctx.settings.path(data.path))  # validates; training reads it in place
        print(f"prepare-data: {len(entries)} entries in {data.path}")
        return
    gen = data.generator
    spec = spec_from_generator(gen)
    for split, n, out in (("train", gen.n_images, ctx.paths.train_data), ("heldout", gen.n_heldout, ctx.paths.heldout_data)):
        generate_dataset(out, n=n, seed=gen.seed, resolution_px=gen.resolution_px, spec=spec, split=split)
        print(f"prepare-data: {n} {split} images -> {out}")


if __name__ == "__main__":
    main()
