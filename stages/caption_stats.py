"""caption-stats: the paper's Table 1 (nouns in raw vs dense captions) for the training set."""

from pixart import atomic
from pixart.data.caption_stats import dataset_caption_stats
from stages.common import parse


def main() -> None:
    ctx = parse(__doc__)
    rows = dataset_caption_stats(ctx.paths.train_dataset(ctx.profile))
    out = ctx.paths.metrics / "caption_stats.json"
    atomic.write_json(out, {kind: row.to_dict() for kind, row in rows.items()})
    for kind, row in rows.items():
        print(f"caption-stats {kind}: {row.to_dict()}")


if __name__ == "__main__":
    main()
