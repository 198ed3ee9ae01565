"""The synthetic-corpus stage: decoding options reach generate, shards are reproducible, provenance."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

import lmcollapse.engine.sampling as generate_module
from helpers import SingleProcess, micro_opt, token_records
from lmcollapse.config import GenerateConfig, load_config
from lmcollapse.data.records import HUMAN, read_records
from lmcollapse.engine.sampling import (
    InverseCdfSampler,
    _until_end,
    build_generation_config,
    completed_shard,
    probe_batch_size,
    record_uniforms,
    shard_paths,
    write_synthetic_corpus,
)
from lmcollapse.errors import ConfigError
from lmcollapse.run.atomic import read_json, sha256_file

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
    model = micro_opt(vocab_size=40).eval()
    with torch.no_grad():  # a peaked next-token distribution, so that filters visibly bite
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture
def prompts():
    rng = np.random.default_rng(0)
    return token_records([rng.integers(3, 40, size=8).tolist() for _ in range(12)], HUMAN,
                         ids=[f"human-train-{i:06d}" for i in range(12)], text="x")


def run_stage(model, prompts, config, out_dir, seed=0):
    return write_synthetic_corpus(model, Tokenizer(), prompts, config, seed=seed, generation=3,
                                  model_label="micro/generation-03/model", out_dir=out_dir,
                                  accelerator=SingleProcess(), progress=False)


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


def sampler_draws(config: GenerateConfig, logits: torch.Tensor, rows: int, seed: int = 0) -> np.ndarray:
    """The tokens InverseCdfSampler leaves as the only finite logit, for ``rows`` copies of ``logits``."""
    scores = logits.expand(rows, -1).clone()
    uniforms = torch.from_numpy(np.random.default_rng(seed).random((rows, 1), dtype=np.float32))
    out = InverseCdfSampler(config, uniforms, prompt_length=1, end_of_text=None)(torch.zeros((rows, 1), dtype=torch.long), scores)
    assert torch.isfinite(out).sum(dim=1).eq(1).all()  # exactly one token left per sequence
    return out.argmax(dim=1).numpy()


@pytest.mark.parametrize("filters", [{}, {"temperature": 0.7, "top_k": 6}, {"top_p": 0.8}, {"typical_p": 0.9}])
def test_inverse_cdf_sampling_draws_from_the_distribution_multinomial_draws_from(filters):
    from scipy.stats import chisquare
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper

    logits = torch.tensor(np.random.default_rng(0).normal(0, 1.5, size=40), dtype=torch.float32)[None]
    config = dataclasses.replace(BASE, sampler="inverse-cdf", **filters)
    # The exact distribution, through transformers' own warpers (as generate(do_sample=True) applies them).
    warped = logits.clone()
    for key, warper in (("temperature", TemperatureLogitsWarper), ("top_k", TopKLogitsWarper),
                        ("top_p", TopPLogitsWarper), ("typical_p", TypicalLogitsWarper)):
        if key in filters:
            warped = (warper(filters[key]) if key != "typical_p" else warper(mass=filters[key]))(None, warped)
    expected = torch.softmax(warped.double(), dim=-1)[0].numpy()
    draws = sampler_draws(config, logits, 40_000)
    counts = np.bincount(draws, minlength=40)
    assert counts[expected == 0].sum() == 0  # filtered tokens are never drawn
    support = expected > 0
    assert chisquare(counts[support], expected[support] / expected[support].sum() * counts.sum()).pvalue > 1e-3
    # torch.multinomial on the same probabilities: the same distribution, by the same test.
    torch.manual_seed(0)
    reference = np.bincount(torch.multinomial(torch.from_numpy(expected).float()[None].expand(40_000, -1), 1)[:, 0].numpy(),
                            minlength=40)
    assert chisquare(reference[support], expected[support] / expected[support].sum() * reference.sum()).pvalue > 1e-3


def test_inverse_cdf_sampling_is_seeded_and_writes_a_sampled_corpus(model, prompts, tmp_path):
    config = dataclasses.replace(BASE, sampler="inverse-cdf")
    run_stage(model, prompts, config, tmp_path / "a")
    run_stage(model, prompts, config, tmp_path / "b")
    run_stage(model, prompts, config, tmp_path / "c", seed=1)
    shard = "shard-00000.parquet"
    assert sha256_file(tmp_path / "a" / shard) == sha256_file(tmp_path / "b" / shard)  # deterministic for a seed
    assert sha256_file(tmp_path / "a" / shard) != sha256_file(tmp_path / "c" / shard)
    greedy = dataclasses.replace(BASE, do_sample=False)
    run_stage(model, prompts, greedy, tmp_path / "greedy")
    assert read_records(tmp_path / "a" / shard)["input_ids"] != read_records(tmp_path / "greedy" / shard)["input_ids"]
    record = read_json(tmp_path / "a" / "generation_config.json")
    assert record["lmcollapse_sampler"]["sampler"] == "inverse-cdf" and not record.get("do_sample")


def test_inverse_cdf_sampler_keeps_end_of_text_out_as_generates_own_processors_do(model, prompts, tmp_path):
    # The stage leaves min_new_tokens out of the GenerationConfig under the inverse-CDF sampler,
    # which applies the bound itself: the corpus must be token for token the one generate's own
    # MinLength/MinNewTokensLength processors give, and end-of-text never come before the bound.
    likely_end = micro_opt(vocab_size=40).eval()
    with torch.no_grad():  # end-of-text (2) made likely, so that the bound bites and records end
        likely_end.lm_head.weight.mul_(8.0)
        likely_end.model.decoder.final_layer_norm.bias.copy_(likely_end.lm_head.weight[2] / 12)
    config = dataclasses.replace(BASE, sampler="inverse-cdf", min_new_tokens=6, max_new_tokens=12, batch_size=12,
                                 shard_size=12)
    run_stage(likely_end, prompts, config, tmp_path / "stage")
    written = read_records(tmp_path / "stage" / "shard-00000.parquet")["input_ids"]

    library = build_generation_config(config, Tokenizer())
    assert library.min_new_tokens is None  # the bound is the sampler's, not two processors'
    library.min_new_tokens = config.min_new_tokens  # ... and here generate's own processors apply it
    uniforms = torch.from_numpy(np.stack([record_uniforms(0, 3, i, 12) for i in range(12)]))
    ids = torch.tensor(prompts["input_ids"])  # all 8 tokens long: one batch, no padding, the stage's order
    with torch.no_grad():
        out = likely_end.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=library,
                                  logits_processor=LogitsProcessorList(
                                      [InverseCdfSampler(config, uniforms, 8, end_of_text=None)]))
    expected = [_until_end(row, 2).tolist() for row in out[:, 8:].numpy()]
    assert written == expected
    ended = [len(ids) for ids in written if ids[-1] == 2]
    assert ended and min(ended) > config.min_new_tokens and max(map(len, written)) <= 12
    record = read_json(tmp_path / "stage" / "generation_config.json")
    assert record["lmcollapse_sampler"]["min_new_tokens"] == 6 and "min_new_tokens" not in record


def test_eager_attention_while_generating_keeps_the_corpus_and_gives_the_model_back_as_it_was(model, tmp_path,
                                                                                          monkeypatch):
    rng = np.random.default_rng(1)  # uneven prompts: left padding, masked in both kernels
    uneven = token_records([rng.integers(3, 40, size=n).tolist() for n in rng.integers(3, 12, size=100)], HUMAN,
                           ids=[f"human-train-{i:06d}" for i in range(100)], text="x")
    config = dataclasses.replace(BASE, sampler="inverse-cdf", cache_implementation="static", batch_size=20,
                                 shard_size=100)
    seen, real = [], model.generate

    def spy(*args, **kwargs):
        seen.append(model.config._attn_implementation)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    assert model.config._attn_implementation == "sdpa"
    run_stage(model, uneven, config, tmp_path / "sdpa")
    run_stage(model, uneven, dataclasses.replace(config, attn_implementation="eager"), tmp_path / "eager")
    assert seen == ["sdpa"] * 5 + ["eager"] * 5 and model.config._attn_implementation == "sdpa"  # 5 batches each
    texts = {name: read_records(tmp_path / name / "shard-00000.parquet")["input_ids"] for name in ("sdpa", "eager")}
    assert sum(a == b for a, b in zip(texts["sdpa"], texts["eager"])) >= 99  # of 100: another summation order
    assert read_json(tmp_path / "eager" / "generation_config.json")["lmcollapse_attn_implementation"] == "eager"
    assert "lmcollapse_attn_implementation" not in read_json(tmp_path / "sdpa" / "generation_config.json")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "generate", interrupted)  # however the stage ends, the model is given back as it was
    with pytest.raises(KeyboardInterrupt):
        run_stage(model, uneven, dataclasses.replace(config, attn_implementation="eager"), tmp_path / "stopped")
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(model, "generate", real)  # resumed, the stopped stage writes the uninterrupted one's shard
    run_stage(model, uneven, dataclasses.replace(config, attn_implementation="eager"), tmp_path / "stopped")
    assert sha256_file(tmp_path / "stopped" / "shard-00000.parquet") == sha256_file(tmp_path / "eager" / "shard-00000.parquet")

    # A model that cannot switch (transformers only warns) is refused, not recorded as switched.
    monkeypatch.setattr(model, "set_attn_implementation", lambda name: None)
    with pytest.raises(ConfigError, match="generate.attn_implementation: OPTForCausalLM cannot switch its attention "
                                          "from sdpa to eager in place; set generate.attn_implementation=null"):
        run_stage(model, uneven, dataclasses.replace(config, attn_implementation="eager"), tmp_path / "refused")


def test_inverse_cdf_sampling_needs_one_sampled_beam():
    with pytest.raises(ConfigError, match="generate.sampler: inverse-cdf draws the token of a sampled, one-beam search"):
        load_config(None, ["generate.sampler=inverse-cdf", "generate.do_sample=false"])
    with pytest.raises(ConfigError, match="generate.sampler"):
        load_config(None, ["generate.sampler=inverse-cdf", "generate.do_sample=true", "generate.num_beams=3"])


def test_inverse_cdf_sampling_gives_a_record_the_same_text_in_any_batch(model, prompts, tmp_path):
    config = dataclasses.replace(BASE, sampler="inverse-cdf")
    run_stage(model, prompts, config, tmp_path / "batches-of-4")
    run_stage(model, prompts, dataclasses.replace(config, batch_size=3), tmp_path / "batches-of-3")
    run_stage(model, prompts, dataclasses.replace(config, batch_size=1), tmp_path / "one-by-one")
    texts = {name: [ids for shard in ("shard-00000", "shard-00001", "shard-00002")
                    for ids in read_records(tmp_path / name / f"{shard}.parquet")["input_ids"]]
             for name in ("batches-of-4", "batches-of-3", "one-by-one")}
    # Other batch sizes may change the logits' last bits (another matmul blocking), so a draw that
    # falls on a boundary could differ: at least 99% of continuations must be the same.
    for other in ("batches-of-3", "one-by-one"):
        same = sum(a == b for a, b in zip(texts["batches-of-4"], texts[other]))
        assert same >= 0.99 * len(prompts), (other, same)
    # The multinomial sampler, by contrast, draws from one stream per shard, shared by the batch.
    run_stage(model, prompts, BASE, tmp_path / "multinomial-4")
    run_stage(model, prompts, dataclasses.replace(BASE, batch_size=1), tmp_path / "multinomial-1")
    assert read_records(tmp_path / "multinomial-4" / "shard-00000.parquet")["input_ids"] != \
        read_records(tmp_path / "multinomial-1" / "shard-00000.parquet")["input_ids"]


def test_batch_probe_chooses_records_and_keeps_the_text(model, prompts, tmp_path):
    config = dataclasses.replace(BASE, sampler="inverse-cdf", batch_size=2, shard_size=12)
    run_stage(model, prompts, config, tmp_path / "fixed")
    probed = dataclasses.replace(config, batch_probe=True)
    run_stage(model, prompts, probed, tmp_path / "probed")
    record = read_json(tmp_path / "probed" / "batch_probe.json")
    tried = [t["batch_size"] for t in record["tried"]]
    assert tried[0] == 2 and all(b == 2 * a for a, b in zip(tried, tried[1:])) and max(tried) <= len(prompts)
    assert record["batch_size"] in tried and record["steps"] == 8
    fixed = read_records(tmp_path / "fixed" / "shard-00000.parquet")["input_ids"]
    chosen = read_records(tmp_path / "probed" / "shard-00000.parquet")["input_ids"]
    assert sum(a == b for a, b in zip(fixed, chosen)) >= 0.99 * len(prompts)  # the batch does not decide the text
    # A resumed stage reads the recorded choice instead of probing again.
    before = (tmp_path / "probed" / "batch_probe.json").stat().st_mtime_ns
    (tmp_path / "probed" / "shard-00000.json").unlink()
    run_stage(model, prompts, probed, tmp_path / "probed")
    assert (tmp_path / "probed" / "batch_probe.json").stat().st_mtime_ns == before
    assert read_records(tmp_path / "probed" / "shard-00000.parquet")["input_ids"] == chosen


class Rank(SingleProcess):
    """One of two processes, run one after the other: rank 0 notes which files its folder holds at
    each barrier; rank 1, at its k-th barrier, gets the files rank 0 held at its k-th."""

    num_processes = 2

    def __init__(self, index: int, folder, rank0=None):
        self.process_index, self.is_main_process, self.folder, self.rank0 = index, index == 0, folder, rank0
        self.snapshots: list[list[str]] = []

    def wait_for_everyone(self) -> None:
        if self.rank0 is None:
            self.snapshots.append(sorted(p.name for p in self.folder.iterdir()))
            return
        self.snapshots.append(self.rank0.snapshots[len(self.snapshots)])  # IndexError: a barrier rank 0 never reached
        self.folder.mkdir(parents=True, exist_ok=True)  # the main process made it, on the shared filesystem
        for name in self.snapshots[-1]:
            if not (self.folder / name).exists():
                shutil.copy(self.rank0.folder / name, self.folder / name)


def test_batch_probe_every_process_reaches_the_same_barriers(model, prompts, tmp_path):
    # One shard: rank 0 has it all and rank 1 nothing to generate. Rank 1 must still join the
    # probe's barrier; else its last barrier meets rank 0's probe and it reads shards not yet written.
    config = dataclasses.replace(BASE, sampler="inverse-cdf", batch_size=2, shard_size=12, batch_probe=True)
    folders = [tmp_path / "rank0", tmp_path / "rank1"]
    rank0 = Rank(0, folders[0])
    rank1 = Rank(1, folders[1], rank0=rank0)
    for rank, folder in ((rank0, folders[0]), (rank1, folders[1])):
        write_synthetic_corpus(model, Tokenizer(), prompts, config, seed=0, generation=3, model_label="m",
                               out_dir=folder, accelerator=rank, progress=False)
    assert len(rank1.snapshots) == len(rank0.snapshots)
    assert "batch_probe.json" in rank0.snapshots[1] and "shard-00000.json" not in rank0.snapshots[1]


def test_batch_probe_stays_within_a_quarter_of_the_prompts_and_keeps_the_smallest_of_equal_speeds(model, prompts,
                                                                                                  monkeypatch):
    config = dataclasses.replace(BASE, sampler="inverse-cdf", batch_size=1, shard_size=4, max_new_tokens=64)
    now, step, prefill, compiling = [0.0], {}, [0.0], [0.0]  # a clock: the prefill, then 8 steps of step[batch] s

    def decode(model, tokenizer, rows, config, generation_config, seed, bar, uniforms, clock):
        # Every sequence is made to run every step: end-of-text kept out for all of them.
        assert config.min_new_tokens == generation_config.max_new_tokens == 8 and generation_config.min_new_tokens is None
        for k in range(generation_config.max_new_tokens):
            now[0] += prefill[0] * len(rows) if k == 0 else step[len(rows)] + (compiling[0] if k == 1 else 0.0)
            clock(None, None)

    monkeypatch.setattr(generate_module, "_continue_prompts", decode)
    monkeypatch.setattr(generate_module.time, "perf_counter", lambda: now[0])

    def probe(given_prompts=prompts, given_config=config) -> dict:
        return probe_batch_size(model, Tokenizer(), given_prompts, given_config)

    step.update({1: 0.01, 2: 0.01, 4: 0.01, 8: 0.01})  # twice as fast a token at each doubling
    record = probe(given_config=dataclasses.replace(config, shard_size=12))
    assert [t["batch_size"] for t in record["tried"]] == [1, 2]  # 4 is more than a quarter of the 12 prompts
    step.update({3: 0.01, 6: 0.01})  # ... but the configured batch is always tried
    record = probe(given_config=dataclasses.replace(config, batch_size=3, shard_size=12))
    assert [t["batch_size"] for t in record["tried"]] == [3] and record["batch_size"] == 3
    step.update({12: 0.01})  # ... or all the prompts, where there are fewer
    record = probe(given_config=dataclasses.replace(config, batch_size=64, shard_size=1024))
    assert [t["batch_size"] for t in record["tried"]] == [12] and record["batch_size"] == 12
    compiling[0] = 5.0  # a first step that compiles (CUDA, static cache) is not the batch's step
    assert probe()["tried"][0]["step_seconds"] == pytest.approx(0.01)
    compiling[0] = 0.0
    record = probe()
    assert [t["batch_size"] for t in record["tried"]] == [1, 2]
    assert record["tried"][1]["step_seconds"] == pytest.approx(0.01) and record["batch_size"] == 2
    larger = token_records([[3] * 8] * 40, HUMAN, ids=[f"h{i}" for i in range(40)], text="x")
    assert [t["batch_size"] for t in probe(larger)["tried"]] == [1, 2, 4]  # a batch never spans two shards
    step.update({2: 0.0192})  # doubling to 2 gains 4%: the probe stops, and keeps 1, as fast within 5%
    record = probe()
    assert [t["batch_size"] for t in record["tried"]] == [1, 2] and record["batch_size"] == 1
    # The speed is the whole decoding's, max_new_tokens steps: a prefill that grows with the
    # batch weighs once, not once in the probe's eight steps.
    prefill[0] = 1.0  # seconds per prompt
    step.update({1: 0.01, 2: 0.0125, 4: 0.015})
    speeds = [t["new_tokens_per_second"] for t in probe(larger)["tried"]]
    assert speeds == pytest.approx([size * 64 / (size + 63 * s) for size, s in ((1, 0.01), (2, 0.0125), (4, 0.015))])


def test_batch_probe_is_refused_where_the_batch_decides_the_text():
    with pytest.raises(ConfigError, match="generate.batch_probe: with the multinomial sampler the batch decides the text"):
        load_config(None, ["generate.batch_probe=true", "generate.do_sample=true", "generate.num_beams=1"])
    assert load_config(None, ["generate.batch_probe=true"]).generate.batch_probe  # beam search: allowed


PAPER = GenerateConfig(num_beams=5, do_sample=False, repetition_penalty=3.0, min_new_tokens=12, max_new_tokens=12,
                       batch_size=4, shard_size=12)


def reference_loop(model, prompts, batch_size: int) -> list[list[int]]:
    """The reference code's corpus writer: ``model.generate`` over the prompts in their order, in
    batches (left-padded to the batch's longest), the prompt sliced off (Zakahler/curse_recurse),
    at the paper's decoding settings."""
    continuations = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            rows = prompts[start:start + batch_size]["input_ids"]
            longest = max(len(r) for r in rows)
            ids = torch.tensor([[1] * (longest - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
            out = model.generate(ids, attention_mask=mask, num_beams=5, do_sample=False, repetition_penalty=3.0,
                                 min_new_tokens=12, max_new_tokens=12, pad_token_id=1, eos_token_id=2,
                                 length_penalty=1.0, early_stopping=False)
            continuations += [row[longest:].tolist() for row in out]
    return [c[:c.index(2) + 1] if 2 in c else c for c in continuations]  # up to end-of-text, as the stage keeps


def corpus_tokens(folder) -> list[list[int]]:
    return [ids for shard in sorted(folder.glob("shard-*.parquet")) for ids in read_records(shard)["input_ids"]]


def test_beam_search_writes_the_reference_loops_tokens(model, prompts, tmp_path):
    # Same batches, same arithmetic: token for token what the reference loop writes.
    run_stage(model, prompts, PAPER, tmp_path / "same")
    assert corpus_tokens(tmp_path / "same") == reference_loop(model, prompts, PAPER.batch_size)
    # 200 prompts of 4 to 10 tokens: the stage batches them sorted by length, the reference in
    # arrival order, so padding and batches differ; so do a static cache and a probed batch size.
    # Other float sums, the same search: at least 99% of the continuations are the reference's.
    rng = np.random.default_rng(2)
    mixed = token_records([rng.integers(3, 40, size=rng.integers(4, 11)).tolist() for _ in range(200)], HUMAN,
                          ids=[f"m{i}" for i in range(200)], text="x")
    reference = reference_loop(model, mixed, PAPER.batch_size)
    for name, config in (("batch-5", dataclasses.replace(PAPER, batch_size=5)),
                         ("static", dataclasses.replace(PAPER, cache_implementation="static")),
                         ("probe", dataclasses.replace(PAPER, batch_size=2, batch_probe=True))):
        run_stage(model, mixed, dataclasses.replace(config, shard_size=50), tmp_path / name)
        same = sum(a == b for a, b in zip(corpus_tokens(tmp_path / name), reference))
        assert same >= 0.99 * len(mixed), (name, same)


def test_inverse_cdf_corpus_is_a_multinomial_corpus_within_seed_noise(model, tmp_path):
    # 300 prompts x 10 sampled tokens from the peaked micro model. At a given step every sequence
    # draws once, independently of the others: the inverse-CDF corpus's tokens at the first and the
    # last step are distributed as multinomial corpora's (a chi-square test of homogeneity; tokens of
    # one sequence are correlated, so steps are tested apart), and its mean log-likelihood under the
    # model lies within the spread of eight multinomial seeds.
    from scipy.stats import chi2_contingency

    rng = np.random.default_rng(1)
    many = token_records([rng.integers(3, 40, size=6).tolist() for _ in range(300)], HUMAN,
                         ids=[f"h{i}" for i in range(300)], text="x")
    config = dataclasses.replace(BASE, min_new_tokens=10, max_new_tokens=10, batch_size=50, shard_size=300)

    def corpus(sampler: str, seed: int) -> list[list[int]]:
        out = tmp_path / f"{sampler}-{seed}"
        run_stage(model, many, dataclasses.replace(config, sampler=sampler), out, seed=seed)
        return corpus_tokens(out)

    def mean_log_likelihood(continuations) -> float:
        ids = torch.tensor([p + c for p, c in zip(many["input_ids"], continuations)])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[:, 5:-1].float(), dim=-1)
        return float(logp.gather(2, ids[:, 6:, None]).mean())

    multinomial = [corpus("multinomial", seed) for seed in range(8)]
    inverse = corpus("inverse-cdf", 0)
    for step in (0, 9):
        counts = np.array([np.bincount([ids[step] for ids in c], minlength=40) for c in (inverse, *multinomial)])
        common = counts.sum(axis=0) >= 30  # rare tokens pooled into one column, so every cell expects > 4
        pooled = counts[:, ~common].sum(axis=1)
        table = np.column_stack([counts[:, common], pooled]) if pooled.any() else counts[:, common]
        assert chi2_contingency(table).pvalue > 1e-3, step
    spread = [mean_log_likelihood(c) for c in multinomial]
    assert abs(mean_log_likelihood(inverse) - np.mean(spread)) < 4 * np.std(spread, ddof=1)
