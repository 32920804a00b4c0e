"""`pixart data generate | import-folder | import-jsonl` and `pixart caption-stats`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pixart.cli.errors import exit_codes

data_app = typer.Typer(help="Datasets in the PixArt layout (data_info.json + images).", no_args_is_help=True)


@data_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="Dataset folder to create (replaced atomically).")],
    n: Annotated[int, typer.Option(min=1, help="Number of images.")],
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    resolution: Annotated[int, typer.Option(min=1, help="Shorter side of every image, in pixels.")] = 256,
    split: Annotated[str, typer.Option(help="Split name; each split is its own random stream.")] = "train",
    max_objects: Annotated[int, typer.Option(min=1, max=9, help="Objects per scene, 1..max.")] = 2,
) -> None:
    """Render a generated scene dataset with raw and dense captions."""
    from pixart.data.generate import generate_dataset
    from pixart.data.scenes import SceneSpec

    entries = generate_dataset(out, n=n, seed=seed, resolution_px=resolution, spec=SceneSpec(max_objects=max_objects),
                               split=split)
    low = sum(e.quality == "low" for e in entries)
    typer.echo(f"wrote {len(entries)} images ({low} low quality) to {out}")


def _print_report(report: dict, out: Path) -> None:
    typer.echo(f"imported {report['imported']}, already present {report['already_present']}, "
               f"dataset now {report['total']} entries in {out}")
    for reason, count in report["skipped"].items():
        typer.echo(f"skipped {count} ({reason})")
    typer.echo(f"report: {out / 'import_report.json'}")


@data_app.command("import-folder")
def import_folder_cmd(
    src: Annotated[Path, typer.Argument(help="Folder of images with same-named .txt captions.")],
    out: Annotated[Path, typer.Option(help="Dataset folder (appended to when it exists).")],
    quality: Annotated[str, typer.Option(help="Quality tier of the imported images: high or low.")] = "high",
) -> None:
    """Import images with .txt captions; bad entries are skipped and reported."""
    from pixart.data.importers import import_folder

    with exit_codes({FileNotFoundError: 2, ValueError: 2}):
        _print_report(import_folder(src, out, quality=quality), out)


@data_app.command("import-jsonl")
def import_jsonl_cmd(
    file: Annotated[Path, typer.Argument(help='JSONL of {"path", "caption"[, "dense_caption"]}.')],
    out: Annotated[Path, typer.Option(help="Dataset folder (appended to when it exists).")],
    quality: Annotated[str, typer.Option(help="Quality tier of the imported images: high or low.")] = "high",
) -> None:
    """Import a JSONL file of image paths and captions; bad entries are skipped and reported."""
    from pixart.data.importers import import_jsonl

    with exit_codes({FileNotFoundError: 2, ValueError: 2}):
        _print_report(import_jsonl(file, out, quality=quality), out)


def caption_stats_cmd(
    data: Annotated[Path, typer.Option(help="Dataset folder (data_info.json).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the table as JSON here.")] = None,
) -> None:
    """The paper's Table 1 (VN/DN, nouns, caption length) for the raw and dense captions."""
    from rich.console import Console
    from rich.table import Table

    from pixart import atomic
    from pixart.data.caption_stats import dataset_caption_stats
    from pixart.data.format import DatasetError

    with exit_codes({DatasetError: 2}):
        rows = dataset_caption_stats(data)
    table = Table(title=f"caption statistics: {data}")
    for column in ("captions", "kind", "VN/DN", "total nouns", "avg length (words)", "avg nouns / image"):
        table.add_column(column)
    for row in rows.values():
        table.add_row(str(row.captions), row.kind, row.vn_dn, str(row.total_nouns), f"{row.avg_caption_words:.1f}",
                      f"{row.avg_nouns_per_image:.2f}")
    Console().print(table)
    if json_out is not None:
        atomic.write_json(json_out, {kind: row.to_dict() for kind, row in rows.items()})


def register(app: typer.Typer) -> None:
    """Add the ``data`` group and the ``caption-stats`` command."""
    app.add_typer(data_app, name="data")
    app.command("caption-stats")(caption_stats_cmd)
