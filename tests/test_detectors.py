"""The literature's detectors and distances: MAUVE against its reference implementation,
Fast-DetectGPT against a Monte-Carlo estimate of its own criterion, and the watermark from
generation to detection, in every model family; then each in a run, resumed."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import mauve
import numpy as np
import pytest
import torch

from helpers import (
    assert_same_results,
    build_quietly,
    micro_config,
    micro_opt,
    micro_raw_config,
    micro_run,
    without_timing,
    write_pipeline,
)
from lmcollapse.config import GenerateConfig, ModelConfig, load_config
from lmcollapse.data.records import read_records
from lmcollapse.engine.modeling import build_preset_model, load_model, train_bpe_tokenizer
from lmcollapse.engine.watermark import watermark_key, watermark_z_scores, watermarking_config
from lmcollapse.errors import ConfigError
from lmcollapse.metrics.curvature import fast_detectgpt_criterion, monte_carlo_criterion, position_statistics
from lmcollapse.metrics.mauve_score import final_token_features, mauve_between, without_faiss_size_warning
from lmcollapse.metrics.perplexities import TokenStream, iter_blocks
from lmcollapse.run.atomic import sha256_file
from lmcollapse.run.layout import RunDir
from lmcollapse.run.manifests import MANIFEST_CHECKSUM, write_manifest
from lmcollapse.run.seeding import rng
from lmcollapse.stages.generate import read_synthetic

FAMILIES = ("tiny-opt", "tiny-gpt2", "tiny-pythia", "tiny-llama", "tiny-qwen2")
LINES = [" = Valkyria Chronicles = \n", " The game began development in 2010 .\n", " It was released in Japan .\n",
         " Troops of the Gallian militia fought on .\n", " The music was composed by Hitoshi Sakimoto .\n"] * 20
MICRO_SHAPE = dict(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, ffn_dim=32, max_positions=64)


WATERMARKED = GenerateConfig(num_beams=1, do_sample=True, repetition_penalty=1.0, min_new_tokens=32, max_new_tokens=32,
                             watermark=True, watermark_bias=4.0)


def random_sequences(count: int, length: int, vocab: int, seed: int) -> list[np.ndarray]:
    generator = np.random.default_rng(seed)
    return [generator.integers(3, vocab, size=length) for _ in range(count)]


# --- MAUVE -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def featurizer():
    return micro_opt(vocab_size=60, dropout=0.0).eval()


def test_mauve_of_a_sample_with_itself_is_one(featurizer):
    features = final_token_features(featurizer, random_sequences(200, 12, 60, 0), 32)
    assert mauve_between(features, features.copy(), seed=0)["mauve"] == pytest.approx(1.0, abs=1e-6)


def test_mauve_of_one_repeated_sentence_against_varied_text_is_low(featurizer):
    varied = final_token_features(featurizer, random_sequences(200, 12, 60, 1), 32)
    repeated = final_token_features(featurizer, random_sequences(1, 12, 60, 2) * 200, 32)
    other = final_token_features(featurizer, random_sequences(200, 12, 60, 3), 32)
    assert mauve_between(repeated, varied, seed=0)["mauve"] < 0.2
    assert mauve_between(other, varied, seed=0)["mauve"] > 0.8  # another sample of the same distribution


def test_mauve_is_the_reference_implementation_on_the_same_features_and_seeded(featurizer):
    p = final_token_features(featurizer, random_sequences(150, 12, 60, 4), 32)
    q = final_token_features(featurizer, random_sequences(150, 12, 30, 5), 32)  # a narrower vocabulary
    ours = mauve_between(p, q, clusters=10, seed=7)
    assert ours["mauve"] == mauve.compute_mauve(p_features=p, q_features=q, num_buckets=10, seed=7).mauve
    assert mauve_between(p, q, clusters=10, seed=7) == ours  # same seed, same value
    assert ours["clusters"] == 10 and mauve_between(p, q)["clusters"] == 15  # the reference's n/10


def test_mauve_prints_nothing_of_faiss_size_warning_and_lets_other_output_through(featurizer, capfd):
    """faiss warns from C++ whenever it has fewer than 39 points a centroid, which MAUVE's n/10
    always is: every evaluation printed it. Only that line is held back."""
    features = final_token_features(featurizer, random_sequences(100, 12, 60, 8), 32)
    capfd.readouterr()
    mauve.compute_mauve(p_features=features, q_features=features.copy(), seed=0, verbose=False)
    assert "WARNING clustering 200 points to 10 centroids" in capfd.readouterr().err  # what faiss does
    mauve_between(features, features.copy(), seed=0)
    assert capfd.readouterr().err == ""
    with without_faiss_size_warning():
        os.write(2, b"WARNING clustering 5 points to 2 centroids: please provide at least 78 training points\n")
        os.write(2, b"another library's line\n")
        print("and Python's", file=sys.stderr)
    # (under capfd, Python's sys.stderr is pytest's own and may come first)
    assert sorted(capfd.readouterr().err.splitlines()) == ["and Python's", "another library's line"]


def test_features_are_each_texts_last_hidden_state_whatever_the_batch(featurizer):
    sequences = random_sequences(5, 9, 60, 6) + random_sequences(4, 5, 60, 7)  # two lengths: padded batches
    batched = final_token_features(featurizer, sequences, 4)
    with torch.no_grad():
        alone = [featurizer(input_ids=torch.as_tensor(s).unsqueeze(0), output_hidden_states=True).hidden_states[-1][0, -1]
                 for s in sequences]
    np.testing.assert_allclose(batched, torch.stack(alone).numpy(), rtol=1e-5, atol=1e-5)


# --- Fast-DetectGPT ----------------------------------------------------------------------------

def test_fast_detectgpt_equals_a_monte_carlo_estimate_of_its_criterion():
    model = micro_opt(vocab_size=40, dropout=0.0).eval()
    sequences = random_sequences(3, 20, 40, 8)
    analytic = fast_detectgpt_criterion(model, sequences, 2)
    generator = torch.Generator().manual_seed(0)
    sampled = [monte_carlo_criterion(model, s, 20000, generator) for s in sequences]
    np.testing.assert_allclose(analytic, sampled, atol=0.05 * np.abs(analytic).max() + 0.05)


def test_fast_detectgpt_scores_the_models_own_text_above_other_text():
    """Separable by construction: text the scorer sampled itself against text of uniform tokens."""
    model = micro_opt(vocab_size=40, dropout=0.0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # a peaked model, far from uniform
        torch.manual_seed(0)
        own = model.generate(torch.full((40, 1), 2), do_sample=True, max_new_tokens=24, min_new_tokens=24,
                             pad_token_id=1, top_k=0)[:, 1:]
    uniform = random_sequences(40, 24, 40, 9)
    scores = fast_detectgpt_criterion(model, [s.numpy() for s in own] + uniform, 16)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score([1] * 40 + [0] * 40, scores) > 0.95


def draws(model, watermark: bool) -> list[np.ndarray]:
    """300 continuations of 16 tokens, end-of-text (2) kept out as min_new_tokens keeps it out."""
    settings = dict(watermarking_config=watermarking_config(dataclasses.replace(WATERMARKED, watermark_bias=8.0), 0)
                    ) if watermark else {}
    with torch.no_grad():
        torch.manual_seed(1)
        drawn = model.generate(torch.full((300, 1), 2), do_sample=True, max_new_tokens=16, min_new_tokens=16,
                               pad_token_id=1, top_k=0, **settings)
    return [row.numpy() for row in drawn]


@pytest.fixture(scope="module")
def peaked():
    model = micro_opt(vocab_size=40, dropout=0.0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # far from uniform: where the bias lands matters
    return model


def test_unbiased_draws_score_their_expected_likelihood_and_watermarked_ones_less(peaked):
    """position_statistics' expectation is what sampling averages (with end-of-text kept out as
    sampling kept it out); a watermark's draws fall below it: the watermark's cost, measured."""
    ratios = {}
    for watermark in (False, True):
        observed, expected, _, tokens = position_statistics(peaked, draws(peaked, watermark), 64, excluded=(2,),
                                                            excluded_steps=16).sum(axis=0)
        assert tokens == 300 * 16
        ratios[watermark] = observed / expected
    assert ratios[False] == pytest.approx(1.0, abs=0.03)
    assert ratios[True] > 1.15


# --- watermark ---------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", FAMILIES)
def test_a_watermarked_corpus_is_detected_and_an_unwatermarked_one_is_not(preset):
    tokenizer = train_bpe_tokenizer(LINES, 300, 64, ModelConfig(name=preset).family)
    model = build_preset_model(ModelConfig(name=preset, **MICRO_SHAPE), tokenizer, seed=0).eval()
    prompts = torch.as_tensor([tokenizer(line)["input_ids"][:4] for line in LINES[:5]] * 8)

    def continue_prompts(**settings):
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, max_new_tokens=32,
                                 min_new_tokens=32, top_k=0, pad_token_id=tokenizer.pad_token_id, **settings)
        return [row[prompts.shape[1]:].numpy() for row in out]

    marked = continue_prompts(watermarking_config=watermarking_config(WATERMARKED, seed=3))
    plain = continue_prompts()
    z_marked = watermark_z_scores(marked, WATERMARKED, 3, model.config)
    z_plain = watermark_z_scores(plain, WATERMARKED, 3, model.config)
    z_other_key = watermark_z_scores(marked, WATERMARKED, 4, model.config)  # another run's key
    threshold = 4.0
    assert (z_marked > threshold).mean() >= 0.9
    assert (z_plain > threshold).mean() <= 0.05 and (z_other_key > threshold).mean() <= 0.05


def test_the_watermark_key_comes_from_the_seed_and_is_recorded():
    assert watermark_key(0) == watermark_key(0) != watermark_key(1)
    assert 0 < watermark_key(12345) < 2**31
    assert watermarking_config(WATERMARKED, 5).hashing_key == watermark_key(5)


def test_watermark_settings_are_checked():
    with pytest.raises(ConfigError, match="watermark_greenlist_ratio"):
        load_config(None, ["generate.watermark=true", "generate.watermark_greenlist_ratio=1.5"])
    with pytest.raises(ConfigError, match="generate.watermark is false"):
        load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true", "decontaminate.detector=watermark"])
    with pytest.raises(ConfigError, match="unknown detector 'gptzero'"):
        load_config(None, ["decontaminate.measure=[gptzero]"])
    with pytest.raises(ConfigError, match="mauve_clusters"):
        load_config(None, ["evaluate.mauve_samples=100", "evaluate.mauve_clusters=100"])
    with pytest.raises(ConfigError, match="MAUVE compares 24 texts"):
        load_config(None, ["data.max_train_blocks=24", "evaluate.mauve_clusters=30"])


# --- in a run ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_runs_mauve_is_the_reference_on_the_base_models_features(make_micro_run):
    run, config = make_micro_run(["evaluate.mauve_clusters=3"], last_generation=0)
    recorded = json.loads(run.generation(0).mauve.read_text())
    synthetic = read_synthetic(run.generation(0))
    human = [b for b, _ in iter_blocks(TokenStream.from_parquet(run.human_heldout), config.eval_block_size)]
    samples = recorded["samples"]
    assert samples == min(len(human), len(synthetic)) > 3
    base, _ = load_model(run.base_model)
    pick = lambda n, side: np.sort(rng(config.seed, "mauve", side).choice(n, samples, replace=False))  # noqa: E731
    p = final_token_features(base, [np.asarray(synthetic[int(i)]["input_ids"]) for i in pick(len(synthetic), "synthetic")], 8)
    q = final_token_features(base, [human[int(i)] for i in pick(len(human), "human")], 8)
    assert recorded["mauve"] == mauve.compute_mauve(p_features=p, q_features=q, num_buckets=3, seed=config.seed).mauve
    assert recorded["featurizer"].startswith("base model (weights sha256:")
    row = json.loads(run.metrics_json.read_text())["generations"][0]
    assert row["mauve"] == recorded["mauve"] and row["mauve_samples"] == samples
    # The human row: the fine-tuning blocks against the same held-out draw, whose features were
    # saved once (human/mauve-heldout-features.npy) and are the ones computed above, to the bit.
    human_mauve = json.loads(run.human_mauve.read_text())
    train = read_records(run.human_train)
    own = final_token_features(base, [np.asarray(train[int(i)]["input_ids"]) for i in
                                      np.sort(rng(config.seed, "mauve", "human-train").choice(len(train), samples, replace=False))], 8)
    assert np.array_equal(np.load(run.human_mauve_features), q)
    assert human_mauve["mauve"] == mauve.compute_mauve(p_features=own, q_features=q, num_buckets=3, seed=config.seed).mauve
    assert human_mauve["samples"] == samples and human_mauve["featurizer"] == recorded["featurizer"]
    assert json.loads(run.metrics_json.read_text())["reference"]["human"]["mauve"] == human_mauve["mauve"]


@pytest.mark.slow
def test_the_held_out_side_of_mauve_is_embedded_once_per_run_and_recomputed_when_its_file_differs(tmp_path, small_corpus,
                                                                                                 monkeypatch):
    """Generations reuse the held-out features the human row saved; a features file that does not
    match its record (edited, or from other settings) is not trusted: the held-out side is embedded
    again, and the generation's mauve is what it was."""
    from lmcollapse.stages.featurizer import MauveFeaturizer

    embedded = []
    features = MauveFeaturizer.features
    monkeypatch.setattr(MauveFeaturizer, "features", lambda self, ids, progress: embedded.append(len(ids))
                        or features(self, ids, progress))
    run, config = micro_run(tmp_path, small_corpus, ["evaluate.mauve_clusters=3"], last_generation=1)
    assert len(embedded) == 2 + 2  # human train and held-out once, then each generation's corpus
    first = json.loads(run.generation(1).mauve.read_text())
    np.save(run.human_mauve_features, np.zeros_like(np.load(run.human_mauve_features)))
    run.generation(1).mauve.unlink()
    run.generation(1).manifest.unlink()
    embedded.clear()
    build_quietly(config, run.root, 1)
    assert len(embedded) == 2  # the corpus and, the saved file not trusted, the held-out blocks
    assert without_timing(json.loads(run.generation(1).mauve.read_text())) == without_timing(first)
    # A hostile features file whose record was re-signed to match: never unpickled, embedded again.
    record = {k: v for k, v in json.loads(run.human_mauve.read_text()).items() if k != MANIFEST_CHECKSUM}
    np.save(run.human_mauve_features, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    record["heldout_features"]["sha256"] = sha256_file(run.human_mauve_features)
    write_manifest(run.human_mauve, record)
    run.generation(1).mauve.unlink()
    run.generation(1).manifest.unlink()
    embedded.clear()
    build_quietly(config, run.root, 1)
    assert len(embedded) == 2
    assert without_timing(json.loads(run.generation(1).mauve.read_text())) == without_timing(first)
    # A complete run made before the human row had a mauve is not touched: no file is added.
    run.human_mauve.unlink()
    run.human_mauve_features.unlink()
    build_quietly(config, run.root, 1)
    assert not run.human_mauve.exists() and not run.human_mauve_features.exists()
    assert "mauve" not in json.loads(run.metrics_json.read_text())["reference"]["human"]


@pytest.mark.slow
def test_a_watermarked_run_detects_its_own_text_and_resumes_identically(tmp_path, small_corpus):
    overrides = ["data.regime=accumulate", "generate.watermark=true", "generate.watermark_bias=4.0",
                 "decontaminate.enabled=true", "decontaminate.detector=watermark",
                 "decontaminate.measure=[classifier, fast-detectgpt]", "decontaminate.labelled_fraction=0.3",
                 "decontaminate.watermark_threshold=2.0"]
    config = micro_config(small_corpus, overrides)
    whole = tmp_path / "whole"
    build_quietly(config, whole, 2)
    report = json.loads(RunDir(whole).generation(2).decontamination.read_text())
    watermark = report["detectors"]["watermark"]
    assert watermark["recall"] >= 0.8 and watermark["auroc"] > 0.9
    assert set(report["detectors"]) == {"watermark", "classifier", "fast-detectgpt"}
    recorded = json.loads((RunDir(whole).generation(1).synthetic / "generation_config.json").read_text())
    assert recorded["watermarking_config"]["hashing_key"] == watermark_key(config.seed)
    rows = json.loads(RunDir(whole).metrics_json.read_text())["generations"]
    assert rows[2]["detector_watermark_auroc"] == watermark["auroc"]
    # What the bias cost is recorded (a micro model is near-uniform, so it costs little here:
    # test_a_watermark_costs_likelihood_under_its_writer measures it on a peaked model).
    assert all(row["watermark_ppl"] > 0 and row["watermark_ppl_unbiased"] > 0 for row in rows)
    assert all(row["watermark_detected"] > 0.5 for row in rows)
    # Stopped after generation 1, resumed in a folder of another name: the same results.
    parts = RunDir(tmp_path / "parts")
    build_quietly(config, parts.root, 1)
    build_quietly(config, parts.root, 2)
    assert_same_results(RunDir(whole), parts, generations=(0, 1, 2))
    assert parts.generation(2).decontamination.read_bytes() == RunDir(whole).generation(2).decontamination.read_bytes()


@pytest.mark.slow
def test_human_blocks_are_rarely_flagged_by_the_watermark_detector(make_micro_run):
    """The measured false-positive rate on human text at the default threshold (z > 4)."""
    run, config = make_micro_run(["generate.watermark=true"], last_generation=0)
    human = list(read_records(run.human_train)["input_ids"]) + list(read_records(run.human_heldout)["input_ids"])
    model, _ = load_model(run.base_model)
    z = watermark_z_scores([np.asarray(ids) for ids in human], config.generate, config.seed, model.config)
    assert len(z) > 30 and (z > 4.0).mean() <= 0.02


@pytest.mark.parametrize("overrides, message", [
    (["data.regime=accumulate", "decontaminate.enabled=true", "decontaminate.detector=fast-detectgpt",
      "decontaminate.scorer=./no-such-scorer"], "decontaminate.scorer: no model folder at no-such-scorer"),
    (["evaluate.mauve_featurizer=/no/such/featurizer"], "evaluate.mauve_featurizer: no model folder at /no/such/featurizer"),
    (["evaluate.mauve_clusters=30"], "evaluate.mauve_clusters: is 30 but MAUVE compares 12 texts a side"),
    (["decontaminate.measure=[watermark]", "data.regime=accumulate", "decontaminate.enabled=true"],
     "decontaminate.detector: watermark finds the run's own watermark, but generate.watermark is false"),
    (["decontaminate.watermark_threshold=-1000"], "decontaminate.watermark_threshold: must be a positive z-score"),
])
def test_a_bad_detector_or_mauve_setting_stops_in_one_line_before_anything_runs(tmp_path, small_corpus, capsys,
                                                                                 overrides, message):
    from lmcollapse.cli import main

    pipeline = write_pipeline(tmp_path / "p.yaml", micro_raw_config(small_corpus))
    run = tmp_path / "run"
    code = main(["generation", "0", "--pipeline", str(pipeline), "--run", str(run), "--no-progress", "--set", *overrides])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and message in error[0], error
    assert not run.exists()


@pytest.mark.slow
def test_a_named_scorer_and_featurizer_read_the_text_with_their_own_tokenizer(tmp_path, small_corpus):
    """decontaminate.scorer and evaluate.mauve_featurizer as model folders of another family (GPT-2
    conventions, another vocabulary): they re-encode each record's text."""
    from lmcollapse.engine.modeling import save_model

    tokenizer = train_bpe_tokenizer(LINES, 280, 64, ModelConfig(name="tiny-gpt2").family)  # another vocabulary than 300
    other = tmp_path / "other-family"
    save_model(build_preset_model(ModelConfig(name="tiny-gpt2", **{**MICRO_SHAPE, "vocab_size": 280}), tokenizer, seed=0),
               tokenizer, other)
    config = micro_config(small_corpus, ["data.regime=accumulate", "decontaminate.enabled=true",
                                         "decontaminate.detector=fast-detectgpt", "decontaminate.measure=[perplexity]",
                                         f"decontaminate.scorer={other}", f"evaluate.mauve_featurizer={other}",
                                         "decontaminate.labelled_fraction=0.5"])
    run = RunDir(tmp_path / "run")
    build_quietly(config, run.root, 1)
    report = json.loads(run.generation(1).decontamination.read_text())
    assert set(report["detectors"]) == {"fast-detectgpt", "perplexity"}
    assert all(0.0 <= d["auroc"] <= 1.0 for d in report["detectors"].values())
    mauve_result = json.loads(run.generation(1).mauve.read_text())
    assert mauve_result["featurizer"] == str(other) and mauve_result["feature_dimension"] == MICRO_SHAPE["hidden_size"]


def test_an_empty_or_one_token_sequence_scores_nan_whatever_batch_it_is_in():
    """Nothing is predicted in fewer than two tokens: nan, and its batch-mates' scores unchanged."""
    from lmcollapse.metrics.perplexities import sample_perplexities

    model = micro_opt(vocab_size=40, dropout=0.0).eval()
    full = random_sequences(2, 10, 40, 9)
    short = [np.array([], dtype=np.int64), np.array([5], dtype=np.int64)]
    for score in (fast_detectgpt_criterion, sample_perplexities):
        alone = score(model, full, 4)
        mixed = score(model, [full[0], *short, full[1]], 4)
        assert np.isnan(mixed[1:3]).all(), score.__name__
        np.testing.assert_allclose(mixed[[0, 3]], alone, rtol=1e-6)


def test_the_plan_describes_the_watermark_detector_as_it_works():
    """No probability, no fitting on labelled candidates: a z-score above a threshold."""
    from lmcollapse.data.regimes import describe_regime

    config = load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true", "decontaminate.detector=watermark",
                                "generate.watermark=true", "decontaminate.watermark_threshold=5"])
    assert "decontaminated by the watermark detector (drop a watermark z-score > 5)" in describe_regime(config)
