"""The training loop: accumulation, precision, schedule, padding, order and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import lmcollapse.engine.losses as losses_module
import lmcollapse.engine.training as train_module
from helpers import micro_opt
from lmcollapse.config import PipelineConfig, TrainConfig
from lmcollapse.engine.checkpointer import STATE_FILE, latest_checkpoint, list_checkpoints
from lmcollapse.engine.losses import validation_loss
from lmcollapse.engine.training import epoch_order, schedule, train_model
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.atomic import read_json
from lmcollapse.stages.pipeline import make_accelerator

CONFIG = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-2, min_learning_rate=1e-3, warmup_steps=1,
                     checkpoint_every=3, keep_checkpoints=2)


def fresh_model(dropout: float = 0.0):
    return micro_opt(vocab_size=40, positions=32, dropout=dropout)


def sequences(count=20, seed=0, lengths=(16,)):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 40, size=int(rng.choice(lengths))) for _ in range(count)]


def train(tmp_path, config=CONFIG, data=None, dropout=0.0, precision="no", name="ckpt"):
    accelerator = make_accelerator(dataclasses.replace(PipelineConfig(), train=dataclasses.replace(config, mixed_precision=precision)))
    model, outcome = train_model(fresh_model(dropout), data or sequences(), config, seed=0, generation=0,
                                 checkpoint_dir=tmp_path / name, accelerator=accelerator, data_fingerprint="x",
                                 pad_id=1, progress=False)
    return model, outcome


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("micro", [1, 3, 5])
def test_gradient_accumulation_matches_one_big_batch(tmp_path, micro):
    whole, _ = train(tmp_path, name="whole")
    accumulated, outcome = train(tmp_path, dataclasses.replace(CONFIG, micro_batch_size=micro), name=f"micro{micro}")
    assert outcome.steps == 2 * math.ceil(20 / 8)
    # Float32 sums in another order differ by ~1e-5 after six Adam steps; a wrong normaliser
    # (a mean per micro-batch) would differ at the scale of the learning rate, 1e-2.
    assert torch.allclose(weights(whole), weights(accumulated), atol=1e-4)


def test_training_lowers_the_loss_and_logs_every_step(tmp_path):
    data = [np.tile(np.arange(3, 11), 2)] * 16  # a pattern a tiny model can learn
    config = dataclasses.replace(CONFIG, epochs=6)
    _, outcome = train(tmp_path, config, data=data)
    losses = [h["loss"] for h in outcome.log]
    assert [h["step"] for h in outcome.log] == list(range(1, outcome.steps + 1))
    assert losses[-1] < losses[0] * 0.7
    assert outcome.tokens == sum(h["tokens"] for h in outcome.log) == 6 * 16 * 16


def test_bf16_autocast_trains_on_cpu(tmp_path):
    fp32, _ = train(tmp_path, name="fp32")
    bf16, outcome = train(tmp_path, precision="bf16", name="bf16")
    assert all(math.isfinite(h["loss"]) for h in outcome.log)
    assert not torch.equal(weights(fp32), weights(bf16))  # autocast really ran in bf16
    assert torch.allclose(weights(fp32), weights(bf16), atol=0.05)


def test_padding_does_not_leak_into_the_loss(tmp_path):
    mixed = sequences(count=16, lengths=(5, 9, 16))
    config = dataclasses.replace(CONFIG, epochs=1, batch_size=16)
    together, _ = train(tmp_path, config, data=mixed, name="together")
    # one sequence per micro-batch: no padding at all, same global normaliser
    alone, _ = train(tmp_path, dataclasses.replace(config, micro_batch_size=1), data=mixed, name="alone")
    assert torch.allclose(weights(together), weights(alone), atol=1e-4)


def test_schedule_warms_up_then_decays_to_the_floor():
    factor = schedule(TrainConfig(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=2), total_steps=12)
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert factor(2) == pytest.approx(1.0) and factor(11) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(2, 11))


def test_data_order_is_a_pure_function_of_seed_generation_epoch():
    assert np.array_equal(epoch_order(0, 1, 2, 50), epoch_order(0, 1, 2, 50))
    assert sorted(epoch_order(0, 1, 2, 50)) == list(range(50))
    assert not np.array_equal(epoch_order(0, 1, 2, 50), epoch_order(0, 1, 3, 50))
    assert not np.array_equal(epoch_order(0, 1, 2, 50), epoch_order(0, 2, 2, 50))


def test_checkpoints_keep_the_newest_and_resume_reproduces_the_run(tmp_path):
    config = dataclasses.replace(CONFIG, epochs=3, checkpoint_every=2, keep_checkpoints=2)  # 9 steps
    full, outcome = train(tmp_path, config, dropout=0.1, name="full")
    saved = [c.step for c in list_checkpoints(tmp_path / "full")]
    assert saved == [6, 8]  # every 2 steps, the newest 2 kept, none at the very end
    # Resume from step 6 of the finished run's checkpoints: the last 3 steps are redone identically.
    (tmp_path / "full" / "step-000008").rename(tmp_path / "full" / ".discarded")
    assert latest_checkpoint(tmp_path / "full").step == 6
    resumed, again = train(tmp_path, config, dropout=0.1, name="full")
    assert again.resumed_from_step == 6
    assert torch.equal(weights(full), weights(resumed))
    assert again.log == outcome.log


def test_losses_reach_the_log_in_batches_and_none_is_missing(tmp_path, monkeypatch):
    # Losses are copied to the host every LOSS_EVERY steps: checkpoints between two copies and the
    # outcome must still hold every step's loss, equal to a run that copies after each step.
    config = dataclasses.replace(CONFIG, epochs=3, checkpoint_every=2, keep_checkpoints=2)  # 9 steps
    monkeypatch.setattr(train_module, "LOSS_EVERY", 1)
    _, every_step = train(tmp_path, config, name="every-step")
    monkeypatch.setattr(train_module, "LOSS_EVERY", 5)
    _, batched = train(tmp_path, config, name="batched")
    assert batched.log == every_step.log and all(isinstance(h["loss"], float) for h in batched.log)
    for checkpoint in list_checkpoints(tmp_path / "batched"):  # steps 6 and 8: mid-way between copies
        logged = read_json(checkpoint.path / STATE_FILE)["log"]
        assert logged == every_step.log[:checkpoint.step]


def test_fused_adamw_matches_the_default_one(tmp_path):
    plain, _ = train(tmp_path, name="plain")
    fused, _ = train(tmp_path, dataclasses.replace(CONFIG, fused_optimizer=True), name="fused")
    assert not torch.equal(weights(plain), weights(fused))  # another kernel really ran
    assert torch.allclose(weights(plain), weights(fused), atol=1e-4)  # rounding only (see above)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_torch_compile_trains_like_eager_and_compiles_once_per_process(tmp_path, precision):
    """train.compile compiles the forward and the loss as one function, once per process: the next
    generation's model (another object of the same shape) reuses the compiled code, with mixed
    precision too (accelerate's forward wrapper, a new closure per model, made every generation
    compile again)."""
    from torch._dynamo.utils import counters

    config = dataclasses.replace(CONFIG, epochs=1, compile=True, mixed_precision=precision)
    accelerator = make_accelerator(dataclasses.replace(PipelineConfig(), train=config))
    counters.clear()  # the counts are per process: only this test's compilations
    compiled, outcome = train_model(fresh_model(), sequences(), config, seed=0, generation=0,
                                    checkpoint_dir=tmp_path / "c", accelerator=accelerator, data_fingerprint="x",
                                    pad_id=1, progress=False)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # it really compiled
    eager, reference = train(tmp_path, dataclasses.replace(CONFIG, epochs=1), name="e", precision=precision)
    assert [h["step"] for h in outcome.log] == [h["step"] for h in reference.log]
    assert np.allclose([h["loss"] for h in outcome.log], [h["loss"] for h in reference.log], rtol=1e-4)
    assert torch.allclose(weights(compiled), weights(eager), atol=1e-4)
    train_model(fresh_model(), sequences(seed=1), config, seed=0, generation=1, checkpoint_dir=tmp_path / "c1",
                accelerator=accelerator, data_fingerprint="y", pad_id=1, progress=False)
    assert counters["stats"]["unique_graphs"] == graphs  # the second model compiled nothing new


def test_one_accelerator_for_many_generations_keeps_nothing_between_them(tmp_path):
    """The pipeline trains every generation with one Accelerator. accelerate keeps what it prepared
    (and saves all of it in each checkpoint): after a generation it must hold nothing, and the
    returned model must compute without accelerate's autocast wrapper on forward."""
    accelerator = make_accelerator(dataclasses.replace(PipelineConfig(), train=dataclasses.replace(CONFIG, mixed_precision="bf16")))
    for generation in range(3):
        model, _ = train_model(fresh_model(), sequences(seed=generation), CONFIG, seed=0, generation=generation,
                               checkpoint_dir=tmp_path / f"gen{generation}", accelerator=accelerator,
                               data_fingerprint="x", pad_id=1, progress=False)
        assert accelerator._models == [] and accelerator._optimizers == [] and accelerator._schedulers == []
        # The same weights in a fresh module (what from_pretrained gives after an interruption)
        # compute the same logits: no bf16 autocast is left on the returned model's forward.
        clone = fresh_model()
        clone.load_state_dict(model.state_dict())
        model.eval(), clone.eval()
        ids = torch.tensor([[3, 4, 5, 6, 7]])
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, clone(input_ids=ids).logits)
            # The class's forward, decorators included: a tuple when asked for one
            assert "forward" not in vars(model) and torch.equal(model(input_ids=ids, return_dict=False)[0], clone(input_ids=ids).logits)


def select(tmp_path, mode, name, data, validation, keep=2):
    config = dataclasses.replace(CONFIG, epochs=6, batch_size=4, learning_rate=3e-2, min_learning_rate=1e-2,
                                 checkpoint_every=2, keep_checkpoints=keep, select=mode)
    accelerator = make_accelerator(dataclasses.replace(PipelineConfig(), train=dataclasses.replace(config, select="last")))
    return train_model(fresh_model(), data, config, seed=0, generation=0, checkpoint_dir=tmp_path / name,
                       accelerator=accelerator, data_fingerprint="x", pad_id=1, progress=False,
                       validation=validation if mode == "best-validation" else None)


def test_best_validation_keeps_the_epoch_with_the_lowest_validation_loss(tmp_path):
    # Eight random blocks learnt by heart at a high learning rate: the loss on other random blocks
    # falls for an epoch or two, then rises, so the best epoch is not the last one.
    data, validation = sequences(8, seed=1), sequences(16, seed=2)
    best, outcome = select(tmp_path, "best-validation", "best", data, validation)
    chosen = outcome.selection
    losses = [v["loss"] for v in chosen["validation_losses"]]
    assert [v["epoch"] for v in chosen["validation_losses"]] == list(range(6))
    assert chosen["epoch"] == int(np.argmin(losses)) < 5
    assert chosen["validation_loss"] == min(losses) and chosen["last_validation_loss"] == losses[-1]
    assert chosen["train_loss"] == pytest.approx(np.mean([h["loss"] for h in outcome.log if h["epoch"] == chosen["epoch"]]))
    accelerator = make_accelerator(PipelineConfig())
    # The weights returned are that epoch's: their validation loss is the recorded minimum ...
    assert validation_loss(best, validation, 1, accelerator, 4) == pytest.approx(min(losses), abs=1e-6)
    # ... while selecting the last epoch gives the same training run's last weights.
    last, plain = select(tmp_path, "last", "last", data, validation)
    assert plain.selection is None and plain.log == outcome.log
    assert validation_loss(last, validation, 1, accelerator, 4) == pytest.approx(losses[-1], abs=1e-6)


def test_an_interrupted_selection_resumes_to_the_same_choice(tmp_path):
    data, validation = sequences(8, seed=1), sequences(16, seed=2)
    full, outcome = select(tmp_path, "best-validation", "full", data, validation, keep=10)
    best = [p.name for p in sorted((tmp_path / "full").glob("best-epoch-*"))]
    assert f"best-epoch-{outcome.selection['epoch']:03d}" in best
    # Resume at step 4 (epochs 0 and 1 validated), as after a crash: the best weights of later
    # epochs are gone (never written), and are written again as the epochs are redone.
    for checkpoint in list_checkpoints(tmp_path / "full"):
        if checkpoint.step > 4:
            checkpoint.path.rename(tmp_path / "full" / f".old-{checkpoint.step}")
    for name in best:
        if int(name[-3:]) >= 2:
            (tmp_path / "full" / name).rename(tmp_path / "full" / f".old-{name}")
    resumed, again = select(tmp_path, "best-validation", "full", data, validation, keep=10)
    assert again.resumed_from_step == 4
    assert again.selection == outcome.selection
    assert torch.equal(weights(full), weights(resumed))


def test_best_validation_without_validation_blocks_is_an_error(tmp_path):
    with pytest.raises(LmcollapseError, match="needs validation blocks"):
        select(tmp_path, "best-validation", "none", sequences(8), [])


def test_best_epoch_weights_are_kept_while_a_kept_checkpoint_may_need_them(tmp_path):
    data, validation = sequences(8, seed=1), sequences(16, seed=2)
    _, outcome = select(tmp_path, "best-validation", "pruned", data, validation, keep=2)
    oldest = list_checkpoints(tmp_path / "pruned")[0]
    known = json.loads((oldest.path / "trainer_state.json").read_text())["validation"]
    known_best = min(known, key=lambda v: v["loss"])["epoch"]
    kept = sorted(int(p.name[-3:]) for p in (tmp_path / "pruned").glob("best-epoch-*"))
    assert kept and min(kept) == known_best and outcome.selection["epoch"] in kept


def test_unpadded_batches_go_without_a_mask_and_compute_the_same():
    # No row padded: no mask, so the model takes SDPA's causal kernel without checking a mask of
    # ones (on a GPU the check waits for the device); the logits are the very same.
    full = [np.arange(3, 11), np.arange(11, 19)]
    ids, mask, targets = losses_module._padded_batch(full, 1, torch.device("cpu"))
    assert mask is None and targets[0, -1] == -100 and targets[0, 0] == 4
    model = micro_opt(dropout=0.0).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits)
    _, mask, targets = losses_module._padded_batch([np.arange(3, 11), np.arange(3, 8)], 1, torch.device("cpu"))
    assert mask.tolist()[1] == [1] * 5 + [0] * 3 and targets[1, 4:].tolist() == [-100] * 4


def test_training_validation_and_scoring_build_no_kv_cache(tmp_path, monkeypatch):
    # A model's config asks for a KV cache by default: every forward pass would copy each layer's
    # keys and values into a cache nothing reads (on a GPU, a share of the step's kernels).
    from transformers import cache_utils

    from lmcollapse.metrics.perplexities import sample_perplexities

    built = []
    original = cache_utils.DynamicCache.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cache_utils.DynamicCache, "__init__", counting)
    model, outcome = select(tmp_path, "best-validation", "c", sequences(), sequences(4, seed=1))
    assert len(outcome.selection["validation_losses"]) == 6  # validation ran
    sample_perplexities(model.eval(), sequences(3, seed=2, lengths=(9, 16)), batch_size=2)
    assert built == []
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 4, 5]]))
    assert built == [1]  # the count would see one
