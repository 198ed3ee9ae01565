"""Model families: presets of OPT, GPT-2, GPT-NeoX (Pythia), Llama and Qwen2 shapes, each with its
family's special-token conventions, run the pipeline end to end.

What differs between families and must not be lost on the way: whether the tokenizer puts a token
before every text (OPT's ``</s>``, Llama's ``<s>``; none for GPT-2, Pythia, Qwen2), which token
ends text, whether there is a padding token (GPT-2, Pythia and Llama have none: generation pads
with end-of-text), and the config class with its own names for the same shape.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from helpers import build_quietly, micro_config
from lmcollapse.config import ModelConfig
from lmcollapse.config.presets import PRESET_FAMILIES, TOKEN_CONVENTIONS
from lmcollapse.data.records import read_records
from lmcollapse.engine.modeling import build_preset_model, load_model, save_model, train_bpe_tokenizer
from lmcollapse.run.layout import RunDir

TINY = {"tiny-opt": "opt", "tiny-gpt2": "gpt2", "tiny-pythia": "gpt_neox", "tiny-llama": "llama", "tiny-qwen2": "qwen2"}
LINES = [" = Valkyria Chronicles = \n", " The game began development in 2010 .\n", " It was released in Japan .\n"] * 20
MICRO_SHAPE = dict(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, ffn_dim=32, max_positions=64)


def test_every_preset_has_a_family_with_token_conventions():
    assert {PRESET_FAMILIES[name] for name in TINY} == set(TOKEN_CONVENTIONS)
    assert all(PRESET_FAMILIES[name] == family for name, family in TINY.items())


@pytest.mark.parametrize("preset", TINY)
def test_preset_tokenizer_follows_its_family(preset, tmp_path):
    family = TINY[preset]
    convention = TOKEN_CONVENTIONS[family]
    tokenizer = train_bpe_tokenizer(LINES, 300, 64, family)
    ids = tokenizer(" The game began")["input_ids"]
    special = set(tokenizer.all_special_ids)
    if convention.prepend:
        assert ids[0] == tokenizer.convert_tokens_to_ids(convention.prepend)
        assert not special & set(ids[1:])
    else:
        assert not special & set(ids)
    assert tokenizer.eos_token == convention.eos and tokenizer.bos_token == convention.bos
    # no pad token in the family: generation pads with end-of-text, on the left
    assert tokenizer.pad_token == (convention.pad or convention.eos) and tokenizer.padding_side == "left"
    assert tokenizer.convert_ids_to_tokens(list(range(len(convention.specials)))) == list(convention.specials)
    model = build_preset_model(ModelConfig(name=preset, **MICRO_SHAPE), tokenizer, seed=0)
    assert model.config.model_type == family
    assert (model.config.eos_token_id, model.config.bos_token_id) == (tokenizer.eos_token_id, tokenizer.bos_token_id)
    save_model(model, tokenizer, tmp_path / "model")  # the from_pretrained path every later stage takes
    loaded, loaded_tokenizer = load_model(tmp_path / "model")
    assert type(loaded) is type(model)
    assert loaded_tokenizer(" The game began")["input_ids"] == ids
    assert loaded_tokenizer.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("preset", TINY)
def test_left_padding_does_not_change_a_familys_next_token(preset):
    """Batched generation pads prompts on the left; each family must then predict as unpadded."""
    tokenizer = train_bpe_tokenizer(LINES, 300, 64, TINY[preset])
    model = build_preset_model(ModelConfig(name=preset, **MICRO_SHAPE), tokenizer, seed=0).eval()
    short, long = tokenizer(LINES[2])["input_ids"], tokenizer(LINES[1])["input_ids"]
    batch = tokenizer.pad({"input_ids": [short, long]}, return_tensors="pt")
    with torch.no_grad():
        alone = model.generate(torch.tensor([short]), attention_mask=torch.ones(1, len(short), dtype=torch.long),
                               max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        padded = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert alone[0, len(short):].tolist() == padded[0, batch["input_ids"].shape[1]:].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("preset", TINY)
def test_two_generations_end_to_end_in_each_family(preset, tmp_path, small_corpus):
    family = TINY[preset]
    convention = TOKEN_CONVENTIONS[family]
    overrides = [f"model.name={preset}"] + [f"model.{k}={v}" for k, v in MICRO_SHAPE.items()]
    config = micro_config(small_corpus, overrides)
    build_quietly(config, tmp_path / "run", 1)
    run = RunDir(tmp_path / "run")
    model, tokenizer = load_model(run.generation(1).model)
    assert model.config.model_type == family
    # Blocks: the family's text-opening token where its tokenizer puts one, and nowhere else.
    stream = np.concatenate(read_records(run.human_train)["input_ids"])
    opener = tokenizer.convert_tokens_to_ids(convention.prepend) if convention.prepend else None
    end_ids = {tokenizer.eos_token_id, tokenizer.bos_token_id} - {None}
    if opener is None:
        assert not end_ids & set(stream.tolist())
    else:
        assert (stream == opener).sum() > 0
    # Prompts and continuations: a continuation stops at the family's end-of-text, if it emits one.
    for ids in read_records(run.generation(1).synthetic_shards()[0])["input_ids"]:
        ends = [i for i, t in enumerate(ids) if t == tokenizer.eos_token_id]
        assert not ends or ends == [len(ids) - 1]
    # Perplexity: the "no </s>" variant leaves out the family's end-of-text targets, so it equals
    # the plain one exactly where the held-out text has none (no opener in the family).
    with open(run.metrics_csv, newline="", encoding="utf-8") as handle:
        rows = {row["generation"]: row for row in csv.DictReader(handle)}
    for generation in ("0", "1"):
        plain, without = float(rows[generation]["ppl_blocks"]), float(rows[generation]["ppl_blocks_no_eos"])
        assert np.isfinite(plain) and np.isfinite(without)
        assert (plain == without) == (opener is None)
