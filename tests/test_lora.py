"""Parameter-efficient fine-tuning (train.lora through peft) and gradient checkpointing: only the
adapters train, the saved model is a plain merged model, resumption is exact, and checkpointing
changes memory, not the result."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import micro_opt
from lmcollapse.config import LoraConfig, PipelineConfig, TrainConfig
from lmcollapse.engine.checkpointer import latest_checkpoint
from lmcollapse.engine.modeling import load_model
from lmcollapse.engine.training import train_model
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.layout import RunDir
from lmcollapse.stages.pipeline import make_accelerator

pytest.importorskip("peft", reason="train.lora needs peft (make install installs it)")

LORA = TrainConfig(epochs=6, batch_size=8, learning_rate=5e-2, min_learning_rate=1e-3, checkpoint_every=2,
                   keep_checkpoints=10, lora=LoraConfig(r=4, alpha=8.0, dropout=0.1))
DATA = [np.tile(np.arange(3, 11), 2)] * 16 + [np.arange(20, 36)] * 8  # patterns a small model learns


def train(tmp_path, config=LORA, name="run", dropout=0.1):
    accelerator = make_accelerator(dataclasses.replace(PipelineConfig(), train=config))
    return train_model(micro_opt(vocab_size=40, positions=32, dropout=dropout), DATA, config, seed=0, generation=1,
                       checkpoint_dir=tmp_path / name, accelerator=accelerator, data_fingerprint="x", pad_id=1,
                       progress=False)


def test_lora_trains_only_the_adapted_modules_and_saves_a_merged_model(tmp_path):
    before = micro_opt(vocab_size=40, positions=32, dropout=0.1).state_dict()
    model, outcome = train(tmp_path)
    assert type(model).__name__ == "OPTForCausalLM"  # merged: no peft wrapper, no lora_ weights
    assert set(model.state_dict()) == set(before)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    # peft's default targets for OPT: the query and value projections
    assert changed == {n for n in before if n.endswith(("q_proj.weight", "v_proj.weight"))}
    losses = [h["loss"] for h in outcome.log]
    # the adapters learn (slowly: two rank-4 projections of a random width-16 model)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.03


def test_lora_resumes_to_the_same_weights(tmp_path):
    full, outcome = train(tmp_path, name="full")
    newest = latest_checkpoint(tmp_path / "full")
    newest.path.rename(tmp_path / "full" / ".discarded")  # as if interrupted before it was written
    resume_at = latest_checkpoint(tmp_path / "full").step
    assert 0 < resume_at < newest.step < outcome.steps
    resumed, again = train(tmp_path, name="full")
    assert again.resumed_from_step == resume_at
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    assert again.log == outcome.log


def test_gradient_checkpointing_gives_the_same_model(tmp_path):
    config = dataclasses.replace(LORA, lora=None, checkpoint_every=100)
    plain, _ = train(tmp_path, config, name="plain")
    checkpointed, _ = train(tmp_path, dataclasses.replace(config, gradient_checkpointing=True), name="gc")
    assert not checkpointed.is_activation_checkpointing  # switched off again for generation
    assert not getattr(checkpointed, "_require_grads_hooks", None)
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lora_with_checkpointing_and_best_validation_gives_a_plain_trainable_model(tmp_path):
    config = dataclasses.replace(LORA, gradient_checkpointing=True, select="best-validation")
    accelerator = make_accelerator(dataclasses.replace(PipelineConfig(), train=LORA))
    model, outcome = train_model(micro_opt(vocab_size=40, positions=32, dropout=0.1), DATA, config, seed=0, generation=1,
                                 checkpoint_dir=tmp_path / "run", accelerator=accelerator, data_fingerprint="x",
                                 pad_id=1, progress=False, validation=DATA[:4])
    assert type(model).__name__ == "OPTForCausalLM" and outcome.selection["epoch"] in range(LORA.epochs)
    assert all(p.requires_grad for p in model.parameters())
    assert not model.is_activation_checkpointing and not getattr(model, "_require_grads_hooks", None)


def test_lora_without_peft_or_with_unknown_modules_is_a_one_line_error(tmp_path, monkeypatch):
    bad = dataclasses.replace(LORA, lora=LoraConfig(target_modules=("no_such_proj",)))
    with pytest.raises(LmcollapseError, match=r"train.lora: .*set train.lora.target_modules"):
        train(tmp_path, bad, name="bad")
    monkeypatch.setitem(__import__("sys").modules, "peft", None)
    with pytest.raises(LmcollapseError, match=r"train.lora needs the peft package: run `make install`"):
        train(tmp_path, name="nopeft")


@pytest.mark.slow
def test_a_lora_pipeline_runs_two_generations_and_later_stages_load_plain_models(tmp_path, make_micro_run):
    _, config = make_micro_run(["train.lora.r=4", "model.init=previous"])
    assert config.train.lora == LoraConfig(r=4)
    run = RunDir(tmp_path / "run")
    model, _ = load_model(run.generation(1).model)
    assert not any("lora" in name for name in model.state_dict())
    pipeline = json.loads(json.dumps(__import__("yaml").safe_load(run.pipeline_file.read_text())))
    assert pipeline["train"]["lora"]["r"] == 4
