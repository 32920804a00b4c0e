"""Feature extraction and teacher pairs over ranks: two processes write the bytes one process writes;
the models run in the profile's precision.

Also the torchrun target of its own tests: ``python -m tests.test_features_sharded TEACHER FEATURES
OUT`` writes teacher pairs as one rank of whatever world launched it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, subprocess_env

TORCHRUN = str(REPO / ".venv/bin/torchrun")


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(root: Path, processes: int, *args: str) -> None:
    """``python -m ARGS`` in one process (a world of one, no process group) or under torchrun, on the
    CPU with one thread per process, as `make` would start it for the project at ``root``."""
    env = {**subprocess_env(), "PIXART_ROOT": str(root), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = [sys.executable] if processes == 1 else [
        TORCHRUN, "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1", "--master_port", _free_port()]
    proc = subprocess.run([*launcher, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _smoke_world(root: Path) -> None:
    """What the stages before the `features-<set>` ones leave for the smoke profile (debug spec): the training set,
    the text encoder (a random debug T5 and its trained tokenizer), the two VAEs and the recaptions (here the
    generator's dense captions, keyed as the recaption stage keys them)."""
    from pixart import atomic
    from pixart.captions.recaption import image_hashes
    from pixart.config import load_profile
    from pixart.data.format import load_dataset
    from pixart.data.generate import generate_dataset
    from pixart.models.builders import TINY_VAE_CONFIGS, build_text_encoder, build_vae, train_tokenizer
    from pixart.models.specs import get_spec

    _, profile = load_profile("smoke")
    generator = profile.data.generator
    entries = generate_dataset(root / "data/train", n=generator.n_images, seed=generator.seed,
                               resolution_px=generator.resolution_px)
    captions = [c for e in entries for c in (e.prompt, e.sharegpt4v) if c]
    assert len(load_dataset(root / "data/train")) == generator.n_images
    tokenizer = train_tokenizer(captions, root / "outputs/text-encoder/tokenizer", profile.text_encoder.vocab_size)
    encoder = build_text_encoder(get_spec(profile.model), vocab_size=len(tokenizer))
    encoder.save_pretrained(root / "outputs/text-encoder/text_encoder", safe_serialization=True)
    for name in profile.vaes:
        build_vae(TINY_VAE_CONFIGS[name]).save_pretrained(root / f"outputs/vae-{name}")
    hashes = image_hashes(root / "data/train")
    atomic.write_json(root / "outputs/recaption/train.json",
                      {"captions": {hashes[e.path]: e.sharegpt4v for e in entries}})


# a square set of raw captions and a set of aspect-ratio buckets, high quality only, of fewer images
SETS = ("aes-1024", "base")


@pytest.mark.slow
def test_two_processes_write_the_feature_cache_of_one_byte_for_byte(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _smoke_world(one)
    shutil.copytree(one, two, copy_function=shutil.copy2)
    components = _files(one / "outputs")

    for feature_set in SETS:
        _run(one, 1, "stages.features", feature_set, "--profile", "smoke")
        _run(two, 2, "stages.features", feature_set, "--profile", "smoke")

    a, b = _files(one / "features"), _files(two / "features")
    assert sorted(name for name in a if name.endswith("index.json")) == [f"{s}/index.json" for s in SETS]
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []
    # the work folders (outside features/, which DVC deletes before a re-run) are gone with the caches in place
    assert not (one / ".cache/features-partial").exists() and not (two / ".cache/features-partial").exists()
    # the weights' hashes are memoised outside the components' folders, which are DVC outputs
    assert _files(one / "outputs") == _files(two / "outputs") == components
    assert list((one / ".cache/hashes").glob("*.json"))


def test_the_features_stage_builds_a_named_set_and_refuses_a_stage_that_reads_anothers(monkeypatch):
    from stages import features

    monkeypatch.setattr(sys, "argv", ["stages.features", "kv-1024", "--profile", "smoke"])
    with pytest.raises(SystemExit, match=r"'kv-1024' is not a feature set of profile 'smoke' \(have \['base', "):
        features.main()


def _teacher_world(root: Path) -> tuple[Path, Path]:
    """A debug teacher pipeline and the square feature cache (with its null caption) of 9 images."""
    from pixart.data.features import build_feature_cache
    from pixart.data.generate import generate_dataset
    from pixart.data.null_caption import save_null_caption
    from pixart.models.builders import null_caption_embedding
    from pixart.models.pipeline import save_pipeline
    from tests.helpers_models import DEBUG_IMAGE_SIDE, debug_parts, perturb

    parts = debug_parts(root / "tokenizer")
    perturb(parts["transformer"])
    teacher = save_pipeline(root / "teacher", **parts)
    generate_dataset(root / "data", n=9, seed=0, resolution_px=DEBUG_IMAGE_SIDE)
    features = build_feature_cache(root / "data", root / "features", vae=parts["vae"],
                                   text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                   resolution_px=DEBUG_IMAGE_SIDE, caption_kind="raw", max_tokens=16, batch_size=4)
    save_null_caption(features, *null_caption_embedding(parts["text_encoder"], parts["tokenizer"], 16))
    return teacher, features


@pytest.fixture(scope="module")
def teacher_world(tmp_path_factory):
    return _teacher_world(tmp_path_factory.mktemp("teacher"))


def test_two_processes_write_the_teacher_pairs_of_one_byte_for_byte(teacher_world, tmp_path):
    from pixart.train.dmd_pairs import PAIRS_FILE, TeacherPairs, pair_noise

    teacher, features = teacher_world
    _run(tmp_path, 1, "tests.test_features_sharded", str(teacher), str(features), str(tmp_path / "one"))
    _run(tmp_path, 2, "tests.test_features_sharded", str(teacher), str(features), str(tmp_path / "two"))

    one, two = (tmp_path / "one" / PAIRS_FILE).read_bytes(), (tmp_path / "two" / PAIRS_FILE).read_bytes()
    assert one == two
    pairs = TeacherPairs(tmp_path / "one" / PAIRS_FILE)
    batch = pairs.batch(torch.arange(len(pairs)))
    assert len(pairs) == PAIRS and batch["index"].tolist() == [i % 9 for i in range(PAIRS)]
    torch.testing.assert_close(batch["noise"], pair_noise(0, range(PAIRS), batch["noise"].shape[1:]), rtol=0, atol=0)
    assert not torch.equal(batch["latent"], batch["noise"])


def test_pair_noise_is_keyed_by_pair_not_by_batch():
    from pixart.train.dmd_pairs import pair_noise

    shape = torch.Size((4, 8, 8))
    whole = pair_noise(7, range(6), shape)
    torch.testing.assert_close(torch.cat([pair_noise(7, range(4), shape), pair_noise(7, range(4, 6), shape)]),
                               whole, rtol=0, atol=0)
    assert not torch.equal(pair_noise(8, range(6), shape), whole)
    assert not torch.equal(whole[0], whole[1])


def test_a_bf16_teacher_samples_from_the_rounded_noise_it_stores(teacher_world, tmp_path):
    from pixart.models.pipeline import load_pipeline
    from pixart.train.dmd_pairs import PAIRS_FILE, TeacherPairs, make_teacher_pairs

    teacher, features = teacher_world
    pipeline = load_pipeline(teacher, precision="bf16")
    assert pipeline.transformer.dtype == pipeline.text_encoder.dtype == torch.bfloat16
    assert pipeline.vae.dtype == torch.float32  # the VAE stays fp32 in every precision
    out = make_teacher_pairs(teacher, features, tmp_path / "pairs", pairs=3, steps=2, cfg=4.5, batch_size=2,
                             precision="bf16")
    assert out == tmp_path / "pairs" / PAIRS_FILE
    pairs = TeacherPairs(out)
    noise = pairs.batch(torch.arange(3))["noise"]
    assert noise.dtype == torch.float32 and torch.equal(noise, noise.bfloat16().float())
    assert pairs.metadata["precision"] == "bf16"


def test_text_encoder_comes_back_in_the_dtype_asked_for(tmp_path):
    from pixart.models.builders import build_text_encoder, precision_dtype
    from pixart.models.specs import get_spec

    spec = get_spec("debug")
    fp32 = build_text_encoder(spec, vocab_size=40, seed=1)
    bf16 = build_text_encoder(spec, vocab_size=40, seed=1, dtype=precision_dtype("bf16"))
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    for (name, a), b in zip(fp32.state_dict().items(), bf16.state_dict().values(), strict=True):
        assert torch.equal(a.bfloat16(), b), name  # the fp32 init, rounded
    fp32.save_pretrained(tmp_path / "encoder", safe_serialization=True)
    loaded = build_text_encoder(tmp_path / "encoder", dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16} and loaded.device.type == "cpu"
    assert {p.dtype for p in build_text_encoder(tmp_path / "encoder").parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="precision: 'fp16'"):
        precision_dtype("fp16")


PAIRS = 5  # three batches of two over two ranks: rank 0 samples two, rank 1 one


def _pairs_main(teacher: str, features: str, out: str) -> None:
    from pixart.train.dmd_pairs import make_teacher_pairs
    from stages.features import join_launcher

    join_launcher()
    make_teacher_pairs(Path(teacher), Path(features), Path(out), pairs=PAIRS, steps=2, cfg=4.5, batch_size=2)


if __name__ == "__main__":
    _pairs_main(*sys.argv[1:])
