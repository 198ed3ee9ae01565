"""Data regimes, provenance-aware weighting and decontamination do what they claim."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from helpers import SingleProcess, build_quietly, micro_config, micro_opt, token_records
from lmcollapse.config import load_config
from lmcollapse.data.records import HUMAN, SYNTHETIC, read_records
from lmcollapse.data.regimes import assemble_training_set, choose, loss_weights, prompts_for
from lmcollapse.engine.losses import chunk_loss as _chunk_loss
from lmcollapse.run.layout import RunDir
from lmcollapse.stages.decontaminate import Scorer, decontaminate, detection_report

N = 20


def records(source: str, generation: int | None, count: int = N, token_range=(3, 100), seed=0):
    rng = np.random.default_rng(seed + (generation or 0) * 7 + (source == HUMAN) * 3)
    prefix = "human-train" if source == HUMAN else f"g{generation:02d}"
    return token_records([rng.integers(*token_range, size=16).tolist() for _ in range(count)], source, generation,
                         ids=[f"{prefix}-{i:06d}" for i in range(count)], text="t")


HUMAN_TRAIN = records(HUMAN, None)
CORPORA = {g: records(SYNTHETIC, g) for g in range(6)}


def assemble(overrides: list[str], generation: int):
    config = load_config(None, overrides)
    return assemble_training_set(config, generation, HUMAN_TRAIN, CORPORA.__getitem__)


def composition(dataset) -> Counter:
    return Counter("human" if s == HUMAN else f"g{g}" for s, g in zip(dataset["source"], dataset["generation"]))


def test_generation_zero_is_the_human_data_in_every_regime():
    for regime in (["data.regime=replace"], ["data.regime=accumulate"], ["data.regime=keep-fraction", "data.human_fraction=0.3"]):
        assert assemble(regime, 0)["id"] == HUMAN_TRAIN["id"]


def test_replace_trains_on_the_previous_corpus_only():
    for k in (1, 3):
        assert composition(assemble([], k)) == {f"g{k - 1}": N}


def test_keep_fraction_sizes_sources_and_resampling():
    resampled = [assemble(["data.regime=keep-fraction", "data.human_fraction=0.25"], k) for k in (1, 2, 3)]
    for k, train in zip((1, 2, 3), resampled):
        assert len(train) == N and composition(train) == {"human": 5, f"g{k - 1}": 15}
    human_ids = [frozenset(i for i, s in zip(t["id"], t["source"]) if s == HUMAN) for t in resampled]
    assert len(set(human_ids)) == 3  # a fresh draw each generation
    fixed = [assemble(["data.regime=keep-fraction", "data.human_fraction=0.25", "data.human_resample=false"], k) for k in (1, 2, 3)]
    assert len({frozenset(i for i, s in zip(t["id"], t["source"]) if s == HUMAN) for t in fixed}) == 1


def test_a_human_fraction_schedule_per_generation():
    schedule = ["data.regime=keep-fraction", "data.human_fraction_schedule=[0.5, 0.2, 0.05]"]
    assert [composition(assemble(schedule, k))["human"] for k in (1, 2, 3, 4, 5)] == [10, 4, 1, 1, 1]
    assert all(len(assemble(schedule, k)) == N for k in (1, 4))


def human_ids(dataset) -> set[str]:
    return {i for i, s in zip(dataset["id"], dataset["source"]) if s == HUMAN}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_schedule_without_resampling_keeps_nested_human_blocks(seed):
    schedule = ["data.regime=keep-fraction", "data.human_fraction_schedule=[0.5, 0.2, 0.05]",
                "data.human_resample=false", f"seed={seed}"]
    picked = [human_ids(assemble(schedule, k)) for k in (1, 2, 3, 4, 5)]
    assert [len(p) for p in picked] == [10, 4, 1, 1, 1]
    for generation, (larger, smaller) in enumerate(zip(picked, picked[1:]), start=2):
        assert smaller <= larger, f"generation {generation}'s human blocks are not among generation {generation - 1}'s"
    assert picked[2] == picked[3] == picked[4]  # the held share keeps its blocks
    growing = ["data.regime=keep-fraction", "data.human_fraction_schedule=[0.05, 0.2, 0.5]",
               "data.human_resample=false", f"seed={seed}"]
    grown = [human_ids(assemble(growing, k)) for k in (1, 2, 3)]
    assert grown[0] <= grown[1] <= grown[2] and len(grown[2]) == 10


def test_choose_is_a_pure_nested_function_of_its_key():
    draws = {count: choose(50, count, 7, "keep-fraction/human", 1) for count in (0, 1, 5, 20, 49, 50, 60)}
    for count, indices in draws.items():
        assert list(indices) == sorted(set(indices.tolist())) and len(indices) == min(count, 50)
        assert np.array_equal(indices, choose(50, count, 7, "keep-fraction/human", 1))
    for small, large in ((1, 5), (5, 20), (20, 49), (49, 50)):
        assert set(draws[small].tolist()) <= set(draws[large].tolist())
    assert not np.array_equal(draws[20], choose(50, 20, 8, "keep-fraction/human", 1))
    assert not np.array_equal(draws[20], choose(50, 20, 7, "keep-fraction/human", 2))
    assert not np.array_equal(draws[20], choose(50, 20, 7, "prompts", 1))


def test_accumulate_keeps_everything():
    for k in (1, 2, 4):
        train = assemble(["data.regime=accumulate"], k)
        assert len(train) == N * (k + 1)
        assert composition(train) == {"human": N, **{f"g{g}": N for g in range(k)}}


def test_accumulate_subsample_draws_a_fixed_size_from_the_pool():
    for k in (1, 3):
        train = assemble(["data.regime=accumulate-subsample"], k)
        assert len(train) == N and len(set(train["id"])) == N
        assert set(composition(train)) <= {"human", *(f"g{g}" for g in range(k))}
    big = assemble(["data.regime=accumulate-subsample", "data.train_size=50"], 4)
    assert len(big) == 50 and len(composition(big)) == 5  # drawn from all five sources
    assert assemble(["data.regime=accumulate-subsample"], 3)["id"] == assemble(["data.regime=accumulate-subsample"], 3)["id"]


def test_prompts_keep_the_corpus_at_the_human_size():
    config = load_config(None, ["data.regime=accumulate"])
    grown = assemble(["data.regime=accumulate"], 3)
    prompts = prompts_for(config, 3, grown, N)
    assert len(prompts) == N and set(prompts["id"]) <= set(grown["id"])
    assert prompts_for(config, 0, HUMAN_TRAIN, N)["id"] == HUMAN_TRAIN["id"]


@pytest.mark.parametrize("kept", [1, 7, 10, 13, 19])
def test_prompts_keep_the_corpus_at_the_human_size_when_decontamination_shrank_the_set(kept):
    config = load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true"])
    shrunk = HUMAN_TRAIN.select(sorted(np.random.default_rng(kept).choice(N, kept, replace=False)))  # what survived
    prompts = prompts_for(config, 2, shrunk, N)
    assert len(prompts) == N
    assert prompts["id"][:len(shrunk)] == shrunk["id"]  # every block once, in order, first
    uses = Counter(prompts["id"])
    assert set(uses) == set(shrunk["id"])
    if 2 * len(shrunk) >= N:  # one extra pass suffices: no block is continued more than twice
        assert max(uses.values()) <= 2
    assert prompts["id"] == prompts_for(config, 2, shrunk, N)["id"]  # seeded
    assert prompts["input_ids"] == [shrunk["input_ids"][shrunk["id"].index(i)] for i in prompts["id"]]


def test_prompts_are_exactly_the_corpus_size_in_all_three_cases():
    config = load_config(None, ["data.regime=accumulate", "seed=5"])
    other_seed = load_config(None, ["data.regime=accumulate", "seed=6"])
    grown = assemble(["data.regime=accumulate"], 2)  # 3 N blocks
    for train_set in (grown, HUMAN_TRAIN, HUMAN_TRAIN.select(range(6))):
        prompts = prompts_for(config, 3, train_set, N)
        assert len(prompts) == N and set(prompts["id"]) <= set(train_set["id"])
        assert prompts["id"] == prompts_for(config, 3, train_set, N)["id"]
    assert prompts_for(config, 3, grown, N)["id"] != prompts_for(other_seed, 3, grown, N)["id"]
    small = HUMAN_TRAIN.select(range(6))
    assert prompts_for(config, 3, small, N)["id"] != prompts_for(other_seed, 3, small, N)["id"]
    assert prompts_for(config, 3, small, N)["id"] != prompts_for(config, 4, small, N)["id"]


def test_prompts_from_an_empty_training_set_are_an_error():
    from lmcollapse.errors import LmcollapseError

    config = load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true"])
    with pytest.raises(LmcollapseError, match="generation 2's training set is empty.*raise decontaminate.threshold"):
        prompts_for(config, 2, HUMAN_TRAIN.select([]), N)


def test_human_loss_weight_changes_the_loss_as_claimed():
    model = micro_opt(vocab_size=100, positions=32, dropout=0.0).eval()
    mixed = assemble(["data.regime=keep-fraction", "data.human_fraction=0.5"], 1)
    config = load_config(None, ["data.regime=keep-fraction", "data.human_fraction=0.5", "train.human_loss_weight=3"])
    weights = loss_weights(config, mixed)
    assert sorted(Counter(weights.tolist()).items()) == [(1.0, 10), (3.0, 10)]
    assert loss_weights(load_config(None, []), mixed) is None
    sequences = [np.asarray(ids) for ids in mixed["input_ids"]]
    per_record = []
    with torch.no_grad():
        for seq in sequences:  # hand computation: mean token NLL of each record, alone
            logits = model(input_ids=torch.tensor(seq)[None]).logits[0]
            per_record.append(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(seq[1:]), reduction="sum").item())
    tokens = np.array([len(s) - 1 for s in sequences])
    expected = float(np.sum(weights * per_record) / np.sum(weights * tokens))

    chunk = np.arange(len(sequences))
    with torch.no_grad():
        loss = _chunk_loss(model, sequences, chunk, weights, 1, SingleProcess(), float(np.sum(weights * tokens)))
        plain = _chunk_loss(model, sequences, chunk, np.ones(len(sequences)), 1, SingleProcess(), float(tokens.sum()))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert plain.item() == pytest.approx(sum(per_record) / tokens.sum(), rel=1e-5)
    # Up-weighting the human records pulls the loss toward their own mean token NLL.
    is_human = np.asarray(mixed["source"], dtype=object) == HUMAN
    nll = np.asarray(per_record)
    human_mean = nll[is_human].sum() / tokens[is_human].sum()
    assert abs(loss.item() - human_mean) < abs(plain.item() - human_mean)


def test_detection_report_against_hand_counted_labels():
    truth = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    drop = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    labelled = np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)  # the last two fitted the detector
    report = detection_report(truth, drop, labelled)
    assert (report["true_positives"], report["false_positives"], report["false_negatives"]) == (2, 1, 1)
    assert report["precision"] == pytest.approx(2 / 3) and report["recall"] == pytest.approx(2 / 3)
    assert (report["dropped_human"], report["dropped_synthetic"]) == (2, 3)


@pytest.mark.parametrize("detector", ["classifier", "perplexity", "fast-detectgpt"])
def test_the_detector_is_scored_against_the_true_provenance(detector):
    # Separable by construction: synthetic records use other tokens than human ones.
    human = records(HUMAN, None, 120, token_range=(3, 60))
    synthetic = records(SYNTHETIC, 0, 120, token_range=(40, 100))
    candidates = assemble_training_set(load_config(None, ["data.regime=accumulate"]), 1, human, lambda g: synthetic)
    config = load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true", f"decontaminate.detector={detector}"])
    scorer = None
    if detector != "classifier":  # a model trained on human text finds synthetic text unlikely
        scorer = _unigram_model(candidates)
    kept, report = decontaminate(candidates, config, 1, Scorer(scorer))
    truth = np.array(candidates["source"]) == SYNTHETIC
    kept_ids = set(kept["id"])
    dropped = np.array([i not in kept_ids for i in candidates["id"]])
    assert report["dropped_synthetic"] == int((dropped & truth).sum())
    assert report["dropped_human"] == int((dropped & ~truth).sum())
    assert report["kept"] == len(kept) and report["candidates"] == 240 and report["labelled"] == 48
    assert report["precision"] > 0.9 and report["recall"] > 0.9 and report["auroc"] > 0.95
    assert report["detectors"][detector]["auroc"] == report["auroc"]


def test_several_detectors_are_measured_and_one_filters():
    human = records(HUMAN, None, 120, token_range=(3, 60))
    synthetic = records(SYNTHETIC, 0, 120, token_range=(40, 100))
    candidates = assemble_training_set(load_config(None, ["data.regime=accumulate"]), 1, human, lambda g: synthetic)
    config = load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true",
                                "decontaminate.measure=[perplexity, fast-detectgpt, classifier]"])
    kept, report = decontaminate(candidates, config, 1, Scorer(_unigram_model(candidates)))
    assert list(report["detectors"]) == ["classifier", "perplexity", "fast-detectgpt"]  # the filtering one first
    alone, _ = decontaminate(candidates, load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true"]), 1)
    assert kept["id"] == alone["id"]  # measuring others filters nothing more
    for name, measured in report["detectors"].items():
        assert measured["auroc"] > 0.95, name
        assert set(measured) >= {"precision", "recall", "f1", "auroc"}


def test_the_detector_is_also_measured_without_the_end_of_text_cue():
    """Human and synthetic records drawn from the same tokens, except that human ones hold </s>
    (id 2) as WikiText's line starts do: the detector separates them by that cue alone, and
    without it it is at chance."""
    human = records(HUMAN, None, 120, token_range=(3, 60)).map(lambda r: {"input_ids": [2] + r["input_ids"][1:]})
    synthetic = records(SYNTHETIC, 0, 120, token_range=(3, 60))
    candidates = assemble_training_set(load_config(None, ["data.regime=accumulate"]), 1, human, lambda g: synthetic)
    config = load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true",
                                "decontaminate.labelled_fraction=0.5"])
    _, report = decontaminate(candidates, config, 1, end_of_text_ids=(2,))
    assert report["precision"] > 0.95 and report["recall"] > 0.9  # the cue alone separates them
    cue_free = report["without_end_of_text_cue"]
    assert cue_free["removed_tokens"] == [2]
    assert cue_free["precision"] < 0.7 and cue_free["f1"] < report["f1"] - 0.25  # half are synthetic: chance is 0.5


def _unigram_model(candidates):
    """An OPT whose output layer prefers human tokens: NLL separates the sources."""
    model = micro_opt(vocab_size=100, positions=32).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.model.decoder.final_layer_norm.bias.fill_(1.0)
        model.lm_head.weight[3:40] = 0.5  # tokens only human records use
    return model


def test_decontamination_needs_both_sources_in_the_annotated_sample():
    from lmcollapse.errors import LmcollapseError

    only_synthetic = CORPORA[0]
    config = load_config(None, ["data.regime=accumulate", "decontaminate.enabled=true"])
    with pytest.raises(LmcollapseError, match="annotated sample holds only synthetic records"):
        decontaminate(only_synthetic, config, 1)


def test_accumulate_and_decontamination_end_to_end(tmp_path, small_corpus):
    config = micro_config(small_corpus, ["data.regime=accumulate", "train.epochs=1", "decontaminate.enabled=true",
                                         "decontaminate.labelled_fraction=0.5", "train.human_loss_weight=2"])
    run = RunDir(tmp_path / "accumulate")
    rows = build_quietly(config, run.root, 2)
    corpus = {g: [r for p in run.generation(g).synthetic_shards() for r in read_records(p)] for g in range(3)}
    assert len(corpus[0]) == 24
    for k in (1, 2):
        report = json.loads((run.generation(k).root / "decontamination.json").read_text())
        train = read_records(run.generation(k).train_set)
        synthetic_pool = sum(len(corpus[g]) for g in range(k))
        assert report["candidates"] == 24 + synthetic_pool and len(train) == report["kept"]
        counts = composition(train)
        assert counts["human"] == 24 - report["dropped_human"]
        assert sum(v for key, v in counts.items() if key != "human") == synthetic_pool - report["dropped_synthetic"]
        assert {key for key in counts if key != "human"} <= {f"g{g}" for g in range(k)}
        # The corpus has N records whatever decontamination dropped: it continues this generation's
        # own training blocks, each at least once when the set is smaller than N.
        assert len(corpus[k]) == 24 and {r["parent"] for r in corpus[k]} <= set(train["id"])
        if len(train) <= 24:
            assert {r["parent"] for r in corpus[k]} == set(train["id"])
        assert [r["id"] for r in corpus[k]] == [f"g{k:02d}-{i:07d}" for i in range(24)]
        assert rows[k]["decontam_recall"] == report["recall"] and rows[k]["train_blocks"] == len(train)
        assert rows[k]["decontam_recall_no_eos"] == report["without_end_of_text_cue"]["recall"]


def test_decontamination_that_drops_everything_stops_before_an_empty_training_set_is_written(tmp_path, small_corpus):
    """It used to write an empty training set, fail in training with no fix named, and leave a run
    whose own config could never build the generation."""
    from lmcollapse.errors import LmcollapseError

    config = micro_config(small_corpus, ["data.regime=accumulate", "train.epochs=1", "decontaminate.enabled=true",
                                         "decontaminate.threshold=0.000001"])
    run = RunDir(tmp_path / "everything-dropped")
    build_quietly(config, run.root, 0)
    with pytest.raises(LmcollapseError, match=r"generation 1: decontamination dropped every record of the training set.*"
                                              r"decontaminate.threshold \(1e-06\) cannot build it; start a new RUN="):
        build_quietly(config, run.root, 1)
    assert not run.generation(1).train_set.exists()
