"""The synthetic-corpus stage: decoding options reach generate, shards are reproducible, provenance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lmcollapse.atomic import sha256_file
from lmcollapse.config import GenerateConfig
from lmcollapse.generate import build_generation_config, completed_shard, shard_paths, write_synthetic_corpus
from lmcollapse.records import HUMAN, make_records, read_records

BASE = GenerateConfig(num_beams=1, do_sample=True, repetition_penalty=1.0, min_new_tokens=12,
                      max_new_tokens=12, batch_size=4, shard_size=5)

# Each option, set to a value that must change the generate call, and (with these seeds) its output.
VARIATIONS = {
    "do_sample": dict(do_sample=False),
    "num_beams": dict(do_sample=False, num_beams=3),
    "temperature": dict(temperature=0.3),
    "top_k": dict(top_k=3),
    "top_p": dict(top_p=0.3),
    "typical_p": dict(typical_p=0.3),
    "repetition_penalty": dict(repetition_penalty=5.0),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=1),
    "min_new_tokens": dict(min_new_tokens=3),
    "max_new_tokens": dict(min_new_tokens=3, max_new_tokens=6),
}


class Tokenizer:
    pad_token_id, eos_token_id, bos_token_id = 1, 2, 2

    def batch_decode(self, sequences, skip_special_tokens=True):
        return [" ".join(f"t{t}" for t in seq if not (skip_special_tokens and t in (1, 2))) for seq in sequences]


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM, OPTConfig

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                       max_position_embeddings=64, word_embed_proj_dim=16, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # a peaked next-token distribution, so that filters visibly bite
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture
def prompts():
    rng = np.random.default_rng(0)
    return make_records({
        "id": [f"human-train-{i:06d}" for i in range(12)], "source": [HUMAN] * 12, "generation": [None] * 12,
        "parent": [None] * 12, "model": [None] * 12,
        "input_ids": [rng.integers(3, 40, size=8).tolist() for _ in range(12)], "text": ["x"] * 12})


class Accelerator:
    num_processes, process_index, is_main_process = 1, 0, True

    def wait_for_everyone(self):
        pass


def run_stage(model, prompts, config, out_dir, seed=0):
    return write_synthetic_corpus(model, Tokenizer(), prompts, config, seed=seed, generation=3,
                                  model_label="micro/generation-03/model", out_dir=out_dir,
                                  accelerator=Accelerator(), progress=False)


def spy_on_generate(model, monkeypatch) -> list:
    calls = []
    real = model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs["generation_config"])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    return calls


@pytest.mark.parametrize("option", sorted(VARIATIONS))
def test_every_decoding_option_changes_the_generate_call_and_its_output(option, model, prompts, tmp_path, monkeypatch):
    calls = spy_on_generate(model, monkeypatch)
    run_stage(model, prompts, BASE, tmp_path / "base")
    varied = dataclasses.replace(BASE, **VARIATIONS[option])
    run_stage(model, prompts, varied, tmp_path / "varied")
    base_call, varied_call = calls[0], calls[-1]
    expected = getattr(varied, option)
    neutral = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0}
    assert getattr(base_call, option) == (neutral.get(option, getattr(BASE, option)))
    assert getattr(varied_call, option) == expected != getattr(base_call, option)
    base_ids = read_records(tmp_path / "base" / "shard-00000.parquet")["input_ids"]
    varied_ids = read_records(tmp_path / "varied" / "shard-00000.parquet")["input_ids"]
    assert base_ids != varied_ids


def test_unset_sampling_filters_are_explicitly_off():
    config = build_generation_config(BASE, Tokenizer())  # never left to library defaults (top_k=50)
    assert (config.temperature, config.top_k, config.top_p, config.typical_p) == (1.0, 0, 1.0, 1.0)
    beam = build_generation_config(dataclasses.replace(BASE, do_sample=False, num_beams=5, repetition_penalty=3.0), Tokenizer())
    assert (beam.num_beams, beam.do_sample, beam.repetition_penalty) == (5, False, 3.0)
    assert beam.min_new_tokens == beam.max_new_tokens == 12


def test_records_carry_provenance_and_shards_are_reproducible(model, prompts, tmp_path):
    out = tmp_path / "synthetic"
    shards = run_stage(model, prompts, BASE, out)
    assert [s["records"] for s in shards] == [5, 5, 2]
    records = read_records(out / "shard-00001.parquet")
    row = records[0]
    assert row["id"] == "g03-0000005" and row["source"] == "synthetic" and row["generation"] == 3
    assert row["parent"] == "human-train-000005" and row["model"] == "micro/generation-03/model"
    assert len(row["input_ids"]) == 12 and row["text"] == Tokenizer().batch_decode([row["input_ids"]])[0]
    assert (out / "generation_config.json").is_file()

    # A shard lost (or half-written) is regenerated byte for byte; finished ones are not touched.
    data, sidecar = shard_paths(out, 1)
    digest, untouched = sha256_file(data), (out / "shard-00000.parquet").stat().st_mtime_ns
    data.write_bytes(data.read_bytes()[:100])  # truncated
    assert completed_shard(out, 1) is None
    run_stage(model, prompts, BASE, out)
    assert sha256_file(data) == digest
    assert (out / "shard-00000.parquet").stat().st_mtime_ns == untouched

    other_seed = tmp_path / "other"
    run_stage(model, prompts, BASE, other_seed, seed=1)
    assert sha256_file(other_seed / "shard-00000.parquet") != sha256_file(out / "shard-00000.parquet")


def test_static_kv_cache_writes_the_same_greedy_corpus(model, prompts, tmp_path):
    greedy = dataclasses.replace(BASE, do_sample=False)
    run_stage(model, prompts, greedy, tmp_path / "dynamic")
    run_stage(model, prompts, dataclasses.replace(greedy, cache_implementation="static"), tmp_path / "static")
    config = build_generation_config(dataclasses.replace(greedy, cache_implementation="static"), Tokenizer())
    assert config.cache_implementation == "static"
    for shard in ("shard-00000.parquet", "shard-00002.parquet"):
        assert read_records(tmp_path / "dynamic" / shard)["input_ids"] == read_records(tmp_path / "static" / shard)["input_ids"]
