"""Caption statistics (paper Table 1) with a real offline POS tagger."""

from __future__ import annotations

import pytest

from pixart.data.caption_stats import caption_stats, dataset_caption_stats, load_tagger
from pixart.data.generate import generate_dataset


@pytest.fixture(scope="module")
def nlp():
    return load_tagger()


def test_dense_captions_have_more_nouns_per_image_than_raw(tmp_path, nlp):
    generate_dataset(tmp_path / "d", n=60, seed=0, resolution_px=16)
    rows = dataset_caption_stats(tmp_path / "d", nlp=nlp)
    raw, dense = rows["raw"], rows["dense"]
    assert raw.captions == dense.captions == 60
    assert dense.avg_nouns_per_image > 1.5 * raw.avg_nouns_per_image
    assert dense.avg_caption_words > 2 * raw.avg_caption_words
    assert dense.distinct_nouns > raw.distinct_nouns and dense.total_nouns > raw.total_nouns


def test_counts_nouns_by_lemma_and_valid_threshold(nlp):
    captions = ["a red circle"] * 11 + ["two circles and a dog", "", "a cat"]
    stats = caption_stats(captions, "raw", nlp=nlp)
    assert stats.captions == 13  # the empty caption is no caption
    # circle: 11 + 1 = 12 > 10 (valid); dog, cat once
    assert (stats.valid_distinct_nouns, stats.distinct_nouns, stats.total_nouns) == (1, 3, 14)
    assert stats.vn_dn == "1/3" and stats.avg_nouns_per_image == pytest.approx(14 / 13)
    with pytest.raises(ValueError, match="no non-empty"):
        caption_stats(["", " "], "dense", nlp=nlp)
