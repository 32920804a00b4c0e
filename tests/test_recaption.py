"""The recaption stage's parts: the caption store, the audit, tiny's scene reader and xl's VLM path
(a random tiny LLaVA saved as a folder), including a SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixart.captions.audit import audit, read_caption, score, truth_audit
from pixart.captions.panels import marked, panels_markdown
from pixart.captions.recaption import captions_of, dense_captions, image_hashes, recaption_dataset
from pixart.captions.scene_reader import SceneCaptioner
from pixart.captions.store import CaptionStore
from pixart.data.format import DATA_INFO, DatasetError, load_dataset
from pixart.data.generate import generate_dataset
from pixart.data.scenes import Scene, SceneObject, SceneSpec, dense_caption
from tests.conftest import REPO

SPEC = SceneSpec()
SCENE = Scene(background="gray", objects=(
    SceneObject(shape="circle", color="red", size="small", position="top left"),
    SceneObject(shape="square", color="blue", size="large", position="bottom"),
))  # fmt: skip


def test_the_store_keeps_what_was_written_and_drops_a_torn_line(tmp_path) -> None:
    store = CaptionStore(tmp_path / "store", rank=1)
    store.append([("h1", "images/a.png", "a red circle"), ("h2", "images/b.png", "a blue square")])
    with store.file.open("a") as f:
        f.write('{"sha256": "h3", "path": "images/c.png", "cap')  # killed mid-write
    assert store.read() == {"h1": "a red circle", "h2": "a blue square"}
    store.append([("h3", "images/c.png", "a green star")])
    assert store.read() == {"h1": "a red circle", "h2": "a blue square", "h3": "a green star"}
    CaptionStore(tmp_path / "store", rank=0).append([("h4", "images/d.png", "four")])
    assert set(CaptionStore(tmp_path / "store").read()) == {"h1", "h2", "h3", "h4"}  # every rank's file


def test_the_audit_reads_captions_back_and_counts_what_is_not_in_the_image() -> None:
    truth = dense_caption(SCENE)
    exact = score(read_caption(truth, SPEC), SCENE)
    assert (exact.named, exact.hallucinated, exact.recalled, exact.objects) == (9, 0, 2, 2)
    raw = "small green circle and blue triangle on black"
    s = score(read_caption(raw, SPEC), SCENE)
    # circle (matched): size right, colour wrong; triangle: not there, nor its colour; background wrong
    assert (s.named, s.hallucinated, s.recalled) == (6, 4, 1)
    assert [raw[a:b] for a, b in s.wrong] == ["green", "blue", "triangle", "black"]
    assert marked(raw, s.wrong).startswith("small **~~green~~** circle and **~~blue~~** **~~triangle~~**")
    metrics = truth_audit([truth, raw], [SCENE, SCENE], [truth, truth], SPEC)
    assert metrics == {"hallucination": pytest.approx(4 / 15), "recall": pytest.approx(3 / 4), "exact": 0.5}
    seen_none = dense_caption(Scene(background="gray", objects=()))
    assert truth_audit([seen_none], [SCENE], [truth], SPEC)["recall"] == 0.0


@pytest.fixture(scope="module")
def scenes_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recaption")
    generate_dataset(root / "train", n=160, seed=0, resolution_px=48)
    generate_dataset(root / "heldout", n=24, seed=0, resolution_px=48, split="heldout")
    return root


def test_tiny_recaptions_with_a_trained_scene_reader_beside_the_raw_captions(scenes_data, tmp_path) -> None:
    train, heldout = scenes_data / "train", scenes_data / "heldout"
    before = (heldout / DATA_INFO).read_bytes()
    reader = SceneCaptioner.train(train, tmp_path / "reader", steps=300, seed=1)
    store = CaptionStore(tmp_path / "store")
    report = recaption_dataset(heldout, reader, store, batch_size=10)
    assert (report.images, report.already_done, report.captioned) == (24, 0, 24)
    again = recaption_dataset(heldout, reader, store, batch_size=10)
    assert (again.already_done, again.captioned) == (24, 0)  # an unchanged image is never recaptioned
    assert (heldout / DATA_INFO).read_bytes() == before  # the raw and truth captions stay as they were
    entries = load_dataset(heldout)
    by_path = dense_captions(heldout, captions_of(heldout, store.read()))
    recaptions = [by_path[e.path] for e in entries]
    sources = {"raw": [e.prompt for e in entries], "recaption": recaptions, "truth": [e.sharegpt4v for e in entries]}
    table = audit(sources, scenes=[e.scene for e in entries], truth=sources["truth"], spec=SPEC)
    assert table["truth"]["hallucination"] == 0.0 and table["truth"]["recall"] == 1.0
    # a reader of 300 steps on 160 images: most captions right (measured 0.62 exact), but not all
    assert 0.4 < table["recaption"]["exact"] < 1.0 and table["raw"]["exact"] == 0.0, table
    assert table["recaption"]["avg_nouns_per_image"] > table["raw"]["avg_nouns_per_image"], table
    md = panels_markdown([heldout / e.path for e in entries[:3]], {k: v[:3] for k, v in sources.items()},
                         [e.scene for e in entries[:3]], SPEC, "panels")
    assert md.count("data:image/png;base64,") == 3 and "| image | raw | recaption | truth |" in md


def test_a_caption_the_store_lacks_is_refused_by_file(scenes_data) -> None:
    heldout = scenes_data / "heldout"
    with pytest.raises(DatasetError, match=r"heldout/images/.*no recaption of this image"):
        captions_of(heldout, {})


_RUN_VLM = """
import sys
from pathlib import Path
from pixart.captions.recaption import recaption_dataset
from pixart.captions.store import CaptionStore
from pixart.captions.vlm import VLMCaptioner
captioner = VLMCaptioner(Path(sys.argv[1]), instruction="Describe the image.", max_new_tokens=48)
recaption_dataset(Path(sys.argv[2]), captioner, CaptionStore(Path(sys.argv[3])), batch_size=1)
"""


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> Path:
    from pixart.models.stand_ins import write_vlm

    return write_vlm(tmp_path_factory.mktemp("vlm") / "llava")


def test_a_random_llava_folder_recaptions_through_the_xl_path_and_resumes_after_sigkill(
    vlm, scenes_data, tmp_path
) -> None:
    from pixart.captions.vlm import VLMCaptioner

    train = scenes_data / "train"
    before = (train / DATA_INFO).read_bytes()
    store = CaptionStore(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-c", _RUN_VLM, str(vlm), str(train), str(store.folder)],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if store.file.is_file() and len(store.file.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = store.read()
    assert 5 <= len(kept) < 150
    written_before = store.file.read_text().splitlines()[: len(kept)]

    captioner = VLMCaptioner(vlm, instruction="Describe the image.", max_new_tokens=48)
    resumed = recaption_dataset(train, captioner, store, batch_size=8)
    hashes = list(image_hashes(train).values())  # simple scenes repeat: an image stored twice is captioned once
    assert resumed.already_done == sum(h in kept for h in hashes)
    assert resumed.captioned == len(set(hashes)) - len(kept)
    lines = store.file.read_text().splitlines()
    assert lines[: len(kept)] == written_before  # what the killed run wrote stays, and is not redone
    records = [json.loads(line) for line in lines if line.endswith("}")]
    assert len({r["sha256"] for r in records}) == len(records) == len(set(hashes))
    # greedy: the resumed run's captions are a fresh run's (the batch size and the kill change nothing)
    fresh = CaptionStore(tmp_path / "fresh")
    recaption_dataset(train, captioner, fresh, batch_size=16)
    assert fresh.read() == store.read()
    assert (train / DATA_INFO).read_bytes() == before  # no raw (or dense) caption of the dataset changed


def test_a_vlm_folder_without_a_config_is_refused_by_name(tmp_path) -> None:
    from pixart.captions.vlm import VLMCaptioner

    with pytest.raises(FileNotFoundError, match=r"recaption.model_path: .*nothing.*no config.json"):
        VLMCaptioner(tmp_path / "nothing", instruction="x", max_new_tokens=4)
