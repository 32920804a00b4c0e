"""The hallucination audit of caption sources (the paper's hallucination panels, and Table 1).

Where the truth is known (the generated scenes), each caption is read back into what it claims: the
objects it names (a shape, with the colour, size and place it gives them) and the background. A named
object matches an unmatched object of the image of its shape, the one that agrees with most of its
attributes; ``hallucination`` is the share of everything named (objects, their attributes, the
background) that is not in the image: an object without a match, with all it says of it, or a wrong
attribute of a matched one; ``recall`` the share of the image's objects that a caption names. The
reading knows the dataset's words (its shapes, colours, sizes and the dense caption's place phrases);
a word outside them is not a claim. Every source also gets the paper's Table 1 statistics, and, where a
CLIP model is configured, CLIP-score against its image, which is what imported data without a truth
has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pixart.data.scenes import POSITIONS, SHAPES, SIZES, WHERE, Scene, SceneSpec

Metrics = dict[str, float]
# place phrases longest first: "in the top left corner" before "at the top"
_PLACES = sorted(((tuple(WHERE[p].split()), p) for p in POSITIONS), key=lambda item: -len(item[0]))


Span = tuple[int, int]  # character offsets of a claim's words in its caption


@dataclass(frozen=True)
class Mention:
    shape: str
    color: str | None = None
    size: str | None = None
    position: str | None = None
    spans: tuple[tuple[str, Span], ...] = ()  # (field, span) of each word group that says it

    def attributes(self) -> dict[str, str]:
        named = {"color": self.color, "size": self.size, "position": self.position}
        return {k: v for k, v in named.items() if v is not None}

    def span(self, field: str) -> Span:
        return dict(self.spans)[field]


@dataclass(frozen=True)
class Claims:
    mentions: tuple[Mention, ...]
    background: str | None
    background_span: Span | None = None


def read_caption(caption: str, spec: SceneSpec) -> Claims:
    """What a caption claims, in ``spec``'s words: a colour is an object's when a shape follows it, the
    background's when it comes as "<colour> background", "background color is <colour>" or "on <colour>"."""
    tokens = [(m.group().lower(), m.span()) for m in re.finditer(r"[A-Za-z]+", caption)]
    words = [w for w, _ in tokens]
    mentions: list[Mention] = []
    background, background_span = None, None
    pending: dict[str, tuple[str, Span]] = {}  # colour and size waiting for their shape
    i = 0
    while i < len(words):
        word, span, before = words[i], tokens[i][1], words[i - 1] if i else ""
        if word in spec.colors or word in spec.backgrounds:
            after = words[i + 1] if i + 1 < len(words) else ""
            if after == "background" or before == "on" or words[max(0, i - 3) : i] == ["background", "color", "is"]:
                background, background_span = word, span
            else:
                pending["color"] = (word, span)
        elif word in SIZES:
            pending["size"] = (word, span)
        elif word in SHAPES:
            said = {**pending, "shape": (word, span)}
            for phrase, place in _PLACES:
                if tuple(words[i + 1 : i + 1 + len(phrase)]) == phrase:
                    said["position"] = (place, (tokens[i + 1][1][0], tokens[i + len(phrase)][1][1]))
                    i += len(phrase)
                    break
            values = {field: value for field, (value, _) in said.items()}
            mentions.append(Mention(**values, spans=tuple((field, sp) for field, (_, sp) in said.items())))
            pending = {}
        i += 1
    return Claims(tuple(mentions), background, background_span)


@dataclass(frozen=True)
class Score:
    named: int  # objects, attributes and background a caption names
    hallucinated: int  # of those, not in the image
    recalled: int  # the image's objects it names
    objects: int  # the image's objects
    wrong: tuple[Span, ...]  # where the caption says what is not there


def score(claims: Claims, scene: Scene) -> Score:
    truth = list(scene.objects)
    free = set(range(len(truth)))
    named = hallucinated = 0
    wrong: list[Span] = []
    for m in claims.mentions:
        attributes = m.attributes()
        named += 1 + len(attributes)
        candidates = [j for j in sorted(free) if truth[j].shape == m.shape]
        if not candidates:
            hallucinated += 1 + len(attributes)
            wrong += [span for _, span in m.spans]
            continue
        j = max(candidates, key=lambda j: sum(getattr(truth[j], k) == v for k, v in attributes.items()))
        free.discard(j)
        bad = [k for k, v in attributes.items() if getattr(truth[j], k) != v]
        hallucinated += len(bad)
        wrong += [m.span(k) for k in bad]
    if claims.background is not None:
        named += 1
        if claims.background != scene.background:
            hallucinated += 1
            wrong.append(claims.background_span)  # type: ignore[arg-type]
    return Score(named, hallucinated, len(truth) - len(free), len(truth), tuple(sorted(wrong)))


def truth_audit(captions: Sequence[str], scenes: Sequence[Scene], truth: Sequence[str], spec: SceneSpec) -> Metrics:
    """``hallucination``, ``recall`` and ``exact`` (the share of captions equal to the truth's dense
    caption) of one source's captions of the images of ``scenes``."""
    if len(captions) != len(scenes) or len(truth) != len(scenes):
        raise ValueError(f"captions ({len(captions)}), truth ({len(truth)}) and scenes ({len(scenes)}) differ")
    scores = [score(read_caption(c, spec), s) for c, s in zip(captions, scenes, strict=True)]
    named = sum(s.named for s in scores)
    return {
        "hallucination": sum(s.hallucinated for s in scores) / named if named else 0.0,
        "recall": sum(s.recalled for s in scores) / max(1, sum(s.objects for s in scores)),
        "exact": sum(c == t for c, t in zip(captions, truth, strict=True)) / len(captions),
    }


def audit(sources: Mapping[str, Sequence[str]], *, scenes: Sequence[Scene | None], truth: Sequence[str],
          spec: SceneSpec | None, nlp: Any = None, clip_scores: Mapping[str, float] | None = None) -> dict[str, Metrics]:
    """Per caption source (raw, recaption, truth: captions in the split's order): the truth audit when
    every image has a scene and ``spec`` is given, Table 1's statistics, and its CLIP-score when given."""
    from pixart.data.caption_stats import caption_stats, load_tagger

    nlp = nlp or load_tagger()
    known = spec is not None and all(s is not None for s in scenes)
    out: dict[str, Metrics] = {}
    for source, captions in sources.items():
        row: dict[str, Any] = {}
        if known:
            row |= truth_audit(captions, scenes, truth, spec)  # type: ignore[arg-type]
        stats = caption_stats(captions, source, nlp=nlp).to_dict()
        row |= {k: v for k, v in stats.items() if k not in ("kind", "vn_dn")}
        if clip_scores and source in clip_scores:
            row["clip_score"] = clip_scores[source]
        out[source] = row
    return out
