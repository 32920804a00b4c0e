"""prepare-data: data/train and data/heldout from params.yaml's ``data`` section — the generated
scenes (tiny), or the user's folder / JSONL / data_info.json dataset, checked entry by entry, with a
seeded held-out split or the user's own held-out set (pixart.data.prepare); each imported split
gets an import_report.json of what was skipped and why."""

import sys

from pixart.data.format import DatasetError
from pixart.data.prepare import PrepareError, prepare, summary
from stages.common import parse


def main() -> None:
    ctx = parse(__doc__)
    outs = {"train": ctx.paths.train_data, "heldout": ctx.paths.heldout_data}
    try:
        reports = prepare(ctx.profile.data, outs["train"], outs["heldout"], root=ctx.settings.root)
    except (PrepareError, DatasetError) as exc:
        sys.exit(f"prepare-data: {exc}")
    for split, report in reports.items():
        print(summary(report, outs[split]))


if __name__ == "__main__":
    main()
