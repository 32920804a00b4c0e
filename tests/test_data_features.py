"""The feature cache: keyed by content hashes, recomputed exactly when an input changes."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import T5Config, T5EncoderModel

from pixart.data.buckets import AspectRatioBatchSampler, aspect_ratio_buckets
from pixart.data.feature_identity import cache_key, weights_hash
from pixart.data.features import FeatureCache, build_feature_cache, load_pixels
from pixart.data.format import load_dataset
from pixart.data.generate import generate_dataset
from pixart.data.scenes import SceneSpec
from pixart.models.builders import encode_captions, train_tokenizer

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    spec = SceneSpec(square_fraction=0.4)
    generate_dataset(root / "data", n=24, seed=0, resolution_px=32, spec=spec)
    captions = [c for e in load_dataset(root / "data") for c in (e.prompt, e.sharegpt4v)]
    tokenizer = train_tokenizer(captions * 4, root / "tok", vocab_size=128)
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(VAE_CONFIG).eval()
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    text_encoder = T5EncoderModel(config).eval()
    return root, vae, text_encoder, tokenizer


def _build(root, vae, text_encoder, tokenizer, **overrides):
    kwargs = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "resolution_px": 16,
              "caption_kind": "dense", "max_tokens": 120, "batch_size": 5}
    return build_feature_cache(root / "data", root / "cache", **{**kwargs, **overrides})


def test_cache_recomputes_when_the_vae_changes_and_not_otherwise(parts):
    root, vae, text_encoder, tokenizer = parts
    cache = _build(root, vae, text_encoder, tokenizer)
    index = cache / "index.json"
    first = index.stat().st_mtime_ns, FeatureCache(cache).key

    _build(root, vae, text_encoder, tokenizer)  # same inputs: untouched
    assert (index.stat().st_mtime_ns, FeatureCache(cache).key) == first

    changed = AutoencoderKL.from_config(VAE_CONFIG).eval()
    with torch.no_grad():
        changed.load_state_dict(vae.state_dict())
        changed.encoder.conv_in.bias += 0.1
    assert weights_hash(changed) != weights_hash(vae)
    _build(root, changed, text_encoder, tokenizer)
    assert FeatureCache(cache).key != first[1]
    item = FeatureCache(cache)[0]
    with torch.no_grad():
        expect = changed.encode(load_pixels(root / "data" / load_dataset(root / "data")[item["index"]].path, 16, 16)[None])
    torch.testing.assert_close(item["latent_mean"], expect.latent_dist.mean[0])

    _build(root, changed, text_encoder, tokenizer, caption_kind="raw")  # any other input recomputes too
    assert FeatureCache(cache).components["caption_kind"] == "raw"


def test_cached_features_equal_on_the_fly_encoding(parts):
    root, vae, text_encoder, tokenizer = parts
    cache = FeatureCache(build_feature_cache(root / "data", root / "hq", vae=vae, text_encoder=text_encoder,
                                             tokenizer=tokenizer, resolution_px=16, caption_kind="dense",
                                             max_tokens=120, quality="high", batch_size=4))
    entries = load_dataset(root / "data")
    assert sorted(it["index"] for it in cache.items) == [i for i, e in enumerate(entries) if e.quality == "high"]
    batch = FeatureCache.collate([cache[i] for i in range(3)])
    captions = [entries[int(i)].sharegpt4v for i in batch["index"]]
    text, mask = encode_captions(text_encoder, tokenizer, captions, 120)
    longest = int(mask.sum(1).max())
    assert batch["text"].shape[1] == longest < 120  # stored trimmed, padded to the batch's longest
    torch.testing.assert_close(batch["mask"], mask[:, :longest].long())
    torch.testing.assert_close(batch["text"] * batch["mask"][..., None], text[:, :longest] * mask[:, :longest, None])
    assert batch["latent_mean"].shape == (3, 4, 4, 4) and (batch["latent_std"] > 0).all()
    padded = FeatureCache(cache.dir, pad_to=120)[0]
    assert padded["text"].shape == (120, 16) and padded["mask"].shape == (120,)


def test_bucketed_cache_feeds_the_single_ratio_sampler(parts):
    root, vae, text_encoder, tokenizer = parts
    buckets = aspect_ratio_buckets(32, 16)
    cache = FeatureCache(build_feature_cache(root / "data", root / "ms", vae=vae, text_encoder=text_encoder,
                                             tokenizer=tokenizer, resolution_px=32, caption_kind="raw",
                                             max_tokens=120, buckets=buckets, batch_size=8))
    assert len(set(cache.ratios)) > 1
    sampler = AspectRatioBatchSampler(cache.ratios, batch_size=2, seed=0)
    for indices in sampler:
        batch = FeatureCache.collate([cache[i] for i in indices])
        h, w = buckets[cache.ratios[indices[0]]]
        assert batch["latent_mean"].shape[-2:] == (h // 4, w // 4)
    with pytest.raises(ValueError, match="share one size"):
        FeatureCache.collate([cache[i] for i in range(len(cache))])
    means = [cache[i]["latent_mean"] for i in range(len(cache))]  # shards of several sizes
    low, high = cache.latent_range()
    torch.testing.assert_close(torch.tensor(low), torch.stack([m.amin(dim=(1, 2)) for m in means]).amin(0))
    torch.testing.assert_close(torch.tensor(high), torch.stack([m.amax(dim=(1, 2)) for m in means]).amax(0))


def test_a_cache_of_an_older_format_is_refused_by_name_and_rebuilt(parts, tmp_path):
    import json

    root, vae, text_encoder, tokenizer = parts
    cache = _build(root, vae, text_encoder, tokenizer, batch_size=8)
    old = tmp_path / "old"
    old.mkdir()
    index = json.loads((cache / "index.json").read_text())
    index["components"]["format"] = 1
    index["key"] = cache_key(index["components"])  # as format 1 wrote it
    del index["latent_range"]
    (old / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"old/index.json: feature cache format 1.*rebuild"):
        FeatureCache(old)
    rebuilt = build_feature_cache(root / "data", old, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                  resolution_px=16, caption_kind="dense", max_tokens=120, batch_size=8)
    assert FeatureCache(rebuilt).latent_range() == FeatureCache(cache).latent_range()


def _counting(monkeypatch, module, name: str, fail_after: int | None = None) -> list[int]:
    """Count the calls of ``module.name``; with ``fail_after``, the call after that many dies."""
    calls, real = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_a_killed_build_resumes_and_encodes_only_the_missing_shards(parts, tmp_path, monkeypatch):
    from pixart.data import features

    root, vae, text_encoder, tokenizer = parts
    kwargs = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "resolution_px": 16,
              "caption_kind": "dense", "max_tokens": 120, "batch_size": 5}  # 24 images: 5 shards
    straight = build_feature_cache(root / "data", tmp_path / "straight", **kwargs)
    shards = len(FeatureCache(straight).shards)
    assert shards == 5
    assert not (tmp_path / ".partial").exists()  # the default work folder, beside the cache, is gone

    # as a DVC stage builds it: the work folder outside the output, which DVC deletes before a re-run
    kwargs["work_dir"] = work = tmp_path / "cache/features-partial"
    with monkeypatch.context() as patch:
        _counting(patch, features, "_encode_shard", fail_after=2)
        with pytest.raises(KeyboardInterrupt):
            build_feature_cache(root / "data", tmp_path / "features/killed", **kwargs)
    assert not (tmp_path / "features/killed").exists()
    (partial,) = work.glob("killed-*")
    assert sorted(p.name for p in partial.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]

    calls = _counting(monkeypatch, features, "_encode_shard")
    resumed = build_feature_cache(root / "data", tmp_path / "features/killed", **kwargs)
    assert len(calls) == shards - 2
    assert _bytes(resumed) == _bytes(straight)
    assert not work.exists()
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["killed"]


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_identity_stands_for_the_weights_and_the_text_encoders_dtype_enters_the_key(parts, tmp_path, monkeypatch):
    from pixart.data import feature_identity

    root, vae, text_encoder, tokenizer = parts
    kwargs = {"vae": vae, "tokenizer": tokenizer, "resolution_px": 16, "caption_kind": "dense", "max_tokens": 120,
              "batch_size": 8, "identity": {"vae": "v", "text_encoder": "t", "tokenizer": "k"}}
    _counting(monkeypatch, feature_identity, "weights_hash", fail_after=0)  # given hashes: no weight is read
    fp32 = FeatureCache(build_feature_cache(root / "data", tmp_path / "fp32", text_encoder=text_encoder, **kwargs))
    bf16_encoder = T5EncoderModel(text_encoder.config).eval()
    bf16_encoder.load_state_dict(text_encoder.state_dict())
    bf16 = FeatureCache(build_feature_cache(root / "data", tmp_path / "bf16", text_encoder=bf16_encoder.bfloat16(),
                                            **kwargs))
    assert fp32.components["vae"] == "v" and fp32.components["text_encoder"] == "t"
    assert fp32.key != bf16.key
    assert bf16[0]["text"].dtype == torch.float32  # stored in fp32 whatever the encoder ran in
    torch.testing.assert_close(bf16[0]["text"], fp32[0]["text"], rtol=0.05, atol=0.05)
    assert not torch.equal(bf16[0]["text"], fp32[0]["text"])
    torch.testing.assert_close(bf16[0]["latent_mean"], fp32[0]["latent_mean"], rtol=0, atol=0)


def test_folder_hash_reads_a_file_again_only_when_it_changes(tmp_path, monkeypatch):
    import os
    import shutil

    from pixart import hashing

    folder, memo = tmp_path / "vae", tmp_path / "memo"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.safetensors").write_bytes(b"\0" * 1000)
    listing = sorted(folder.rglob("*"))

    reads = _counting(monkeypatch, hashing, "file_sha256")
    first = hashing.folder_hash(folder, memo_dir=memo)
    assert len(reads) == 2
    assert hashing.folder_hash(folder, memo_dir=memo) == first and len(reads) == 2  # stats only
    assert sorted(folder.rglob("*")) == listing  # the memo lives outside the folder (a DVC output)

    stat = (folder / "sub" / "weights.safetensors").stat()
    (folder / "sub" / "weights.safetensors").write_bytes(b"\1" + b"\0" * 999)  # same size
    os.utime(folder / "sub" / "weights.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    changed = hashing.folder_hash(folder, memo_dir=memo)
    assert changed != first and len(reads) == 3

    shutil.copytree(folder, tmp_path / "copy")  # equal contents elsewhere: the same hash
    assert hashing.folder_hash(tmp_path / "copy", memo_dir=memo) == changed and len(reads) == 5
    (folder / "extra.txt").write_text("x")
    assert hashing.folder_hash(folder, memo_dir=memo) != changed and len(reads) == 6


def test_a_caption_mix_set_carries_the_raw_captions_and_the_recaptions_replace_the_dense(parts, tmp_path):
    from pixart.diffusion.caption_dropout import mix_captions

    root, vae, text_encoder, tokenizer = parts
    entries = load_dataset(root / "data")
    kwargs = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "resolution_px": 16,
              "caption_kind": "dense", "max_tokens": 120, "batch_size": 5}
    plain = FeatureCache(build_feature_cache(root / "data", tmp_path / "plain", **kwargs))
    mixed = FeatureCache(build_feature_cache(root / "data", tmp_path / "mixed", raw_too=True, **kwargs))
    assert not plain.has_raw and mixed.has_raw and mixed.key != plain.key
    batch = FeatureCache.collate([mixed[i] for i in range(4)])
    raw, raw_mask = encode_captions(text_encoder, tokenizer, [entries[int(i)].prompt for i in batch["index"]], 120)
    longest = int(raw_mask.sum(1).max())
    torch.testing.assert_close(batch["raw_text"] * batch["raw_mask"][..., None],
                               raw[:, :longest] * raw_mask[:, :longest, None])
    text, mask = mix_captions(batch["text"], batch["mask"], batch["raw_text"], batch["raw_mask"],
                              torch.tensor([True, False, True, False]))
    for b, use_raw in enumerate((True, False, True, False)):
        own, own_mask = (batch["raw_text"], batch["raw_mask"]) if use_raw else (batch["text"], batch["mask"])
        n = int(own_mask[b].sum())
        assert int(mask[b].sum()) == n and torch.equal(text[b, :n], own[b, :n])

    # the recaption stage's captions replace data_info.json's dense ones, and enter the key
    recaptions = {e.path: f"a recaption number {i}" for i, e in enumerate(entries)}
    recaptioned = FeatureCache(build_feature_cache(root / "data", tmp_path / "re", dense_captions=recaptions, **kwargs))
    assert recaptioned.key != plain.key
    item = recaptioned[0]
    expect, expect_mask = encode_captions(text_encoder, tokenizer, [recaptions[entries[item["index"]].path]], 120)
    torch.testing.assert_close(item["text"], expect[0, : int(expect_mask.sum())])
