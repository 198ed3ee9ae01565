"""Train one generation's model with ``accelerate``: resumable, and bit-reproducible on CPU.

* Data order is a pure function of (seed, generation, epoch): step ``s`` always sees the same
  global batch, so a resumed run feeds exactly the batches an uninterrupted one feeds (no
  ``skip_first_batches``). Each process takes every P-th block of the global batch.
* The global batch is cut into micro-batches of ``micro_batch_size`` blocks; process p takes
  micro-batches p, p+P, ... The loss is the (weighted) sum of token NLL divided by the token count
  of the *global* batch, and dropout is reseeded from (seed, generation, step, micro-batch) before
  each micro-batch. So with an explicit ``micro_batch_size``, one process accumulating two
  micro-batches computes the same gradient as two processes taking one each.
* AdamW, then a linear warm-up and a cosine decay to ``min_learning_rate`` at the last step.
* Every ``checkpoint_every`` steps a checkpoint is saved (``checkpointer.py``: model, optimizer,
  scheduler, RNG and the loss log, complete or not at all); the last ``keep_checkpoints`` are
  kept. Resumption takes the newest complete one by step number.
* The function reads as its parts: ``_prepare`` (adapters, checkpointing, optimizer, ``prepare``),
  ``_resume``, the ``_Loop`` of optimizer steps and epoch selection, ``_release`` (the plain model).

    outcome = train_model(model, sequences, config.train, seed=0, generation=1,
                          checkpoint_dir=gen / "checkpoints", accelerator=accelerator,
                          data_fingerprint=sha, pad_id=1)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmcollapse.config import TrainConfig
from lmcollapse.engine.checkpointer import Checkpointer
from lmcollapse.engine.losses import chunk_loss, validation_loss
from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.failpoints import failpoint
from lmcollapse.run.interrupts import check_stop
from lmcollapse.run.progress import progress_bar
from lmcollapse.run.seeding import derive_seed, rng

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    log: list[dict] = field(default_factory=list)
    resumed_from_step: int | None = None
    selection: dict | None = None


def schedule(config: TrainConfig, total_steps: int):
    """Learning-rate multiplier per step: linear warm-up, then cosine down to the floor."""
    floor = config.min_learning_rate / config.learning_rate
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(total_steps - 1 - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def epoch_order(seed: int, generation: int, epoch: int, num_blocks: int) -> np.ndarray:
    return rng(seed, "order", generation, epoch).permutation(num_blocks)


LOSS_EVERY = 25  # steps between copies of the losses to the host (and progress-bar loss updates)


def train_model(model, sequences: list[np.ndarray], config: TrainConfig, *, seed: int, generation: int,
                checkpoint_dir: Path, accelerator, data_fingerprint: str, pad_id: int,
                weights: np.ndarray | None = None, progress: bool = True, validation: list[np.ndarray] | None = None,
                label: str | None = None) -> tuple[object, TrainOutcome]:
    """Train ``model`` on ``sequences`` (token-id arrays); returns the unwrapped model and a log.

    With ``validation`` blocks and ``config.select == "best-validation"``, the validation loss is
    measured after every epoch and the weights of the epoch with the lowest one are returned.
    """
    label = label or f"generation {generation}"
    if not sequences:
        raise LmcollapseError(f"{label} has an empty training set")
    if config.select == "best-validation" and not validation:
        raise LmcollapseError(f"{label}: train.select=best-validation needs validation blocks, and there are none")
    checkpointer = Checkpointer(Path(checkpoint_dir), config.keep_checkpoints)
    model, optimizer, scheduler = _prepare(model, config, seed, generation, accelerator,
                                           config.epochs * config.steps_per_epoch(len(sequences)))
    loop = _Loop(model, optimizer, scheduler, accelerator, config, checkpointer, sequences, validation, seed,
                 generation, data_fingerprint, pad_id, label, weights)
    loop.resume()
    loop.run(progress)
    outcome = loop.outcome()
    trained = _release(loop, outcome)
    del model, optimizer, scheduler, loop
    accelerator.free_memory()
    return trained, outcome


def _prepare(model, config: TrainConfig, seed: int, generation: int, accelerator, total_steps: int):
    """Adapters and activation checkpointing as configured, AdamW and the schedule, through ``prepare``."""
    if config.lora is not None:
        model = with_lora_adapters(model, config, derive_seed(seed, "lora", generation))
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing: the recomputed forward replays the same dropout masks
        # (the RNG state is restored), so gradients equal those without it.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay, fused=True if config.fused_optimizer else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(config, total_steps))
    # NOTE: accelerate remembers every model, optimizer and scheduler a process ever prepared and
    # saves them all (model_1.safetensors, optimizer_1.bin, ...) in every checkpoint; load_state in
    # a new process would then restore an earlier generation's. Forget them first, so a checkpoint
    # holds exactly this generation's state, and again at the end, so memory does not grow.
    accelerator.free_memory()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # With mixed precision, prepare also wraps the model's forward in autocast and an fp32 cast of
    # its outputs. Every forward pass here already runs under accelerator.autocast() and casts the
    # logits itself; and the wrapper, a new closure for each model, would make torch.compile
    # compile again for every generation (its guards check the closure), falling back to eager
    # after torch's limit of 8 recompilations.
    _drop_forward_wrapper(accelerator.unwrap_model(model, keep_fp32_wrapper=True, keep_torch_compile=True))
    return model, optimizer, scheduler


class _Loop:
    """The optimizer steps of one training run, from wherever its checkpoints left it.

    Process p takes micro-batches p, p+P, ... of each global batch (see the module docstring);
    the losses stay on the device and reach the host every ``LOSS_EVERY`` steps (``settle``)."""

    def __init__(self, model, optimizer, scheduler, accelerator, config: TrainConfig, checkpointer: Checkpointer,
                 sequences, validation, seed: int, generation: int, data_fingerprint: str, pad_id: int, label: str,
                 weights: np.ndarray | None):
        self.model, self.optimizer, self.scheduler, self.accelerator = model, optimizer, scheduler, accelerator
        self.config, self.checkpointer, self.sequences, self.validation = config, checkpointer, sequences, validation
        self.seed, self.generation, self.data_fingerprint, self.pad_id, self.label = \
            seed, generation, data_fingerprint, pad_id, label
        n = len(sequences)
        self.micro = config.micro_batch_size or math.ceil(config.batch_size / accelerator.num_processes)
        self.per_epoch = config.steps_per_epoch(n)
        self.total_steps = config.epochs * self.per_epoch
        self.weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        self.lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        self.selecting = config.select == "best-validation"
        self.start_step, self.history, self.resumed, self.earlier_seconds, self.validations = 0, [], None, 0.0, []
        # Steps whose loss is still a device tensor: copied to the host together (settle), at most
        # every LOSS_EVERY steps and before anything reads the log, so that no step waits for the
        # device to finish the last one (a GPU then queues step n+1 while it computes step n).
        self.pending: list[tuple[dict, torch.Tensor]] = []
        self.tokens_seen, self.started, self.orders = 0, time.perf_counter(), {}

    def resume(self) -> None:
        latest = self.checkpointer.latest()
        if latest is None:
            return
        state = self.checkpointer.verify(latest, self.data_fingerprint)
        self.accelerator.load_state(str(latest.path))
        self.start_step, self.history, self.resumed = latest.step, list(state["log"]), latest.step
        self.earlier_seconds = float(state.get("seconds", 0.0))
        self.validations = list(state.get("validation", []))
        log.info("%s: resuming training at step %d of %d from %s", self.label, self.start_step, self.total_steps,
                 latest.path)

    def settle(self) -> None:
        if self.pending:
            for (entry, _), value in zip(self.pending, torch.stack([loss for _, loss in self.pending]).tolist()):
                entry["loss"] = float(value)
            self.pending.clear()

    def save(self, step: int) -> None:
        self.settle()
        self.checkpointer.save(self.accelerator, step, self.history, self.data_fingerprint,
                               self.earlier_seconds + time.perf_counter() - self.started, validation=self.validations)
        if self.selecting and self.accelerator.is_main_process:
            self.checkpointer.prune_best()

    def run(self, progress: bool) -> None:
        self.started = time.perf_counter()
        self.model.train()
        bar = progress_bar(total=self.total_steps, initial=self.start_step,
                           desc=f"train {self.label.replace('generation ', 'gen ')}", unit="step",
                           enabled=progress and self.accelerator.is_main_process)
        for step in range(self.start_step, self.total_steps):
            check_stop(f"while training {self.label} (step {step}/{self.total_steps})",
                       save=(lambda s=step: self.save(s)) if step > self.start_step else None,
                       accelerator=self.accelerator)
            epoch = step // self.per_epoch
            self.step(step, epoch)
            bar.update(1)
            if (step + 1) % LOSS_EVERY == 0 or step + 1 == self.total_steps:
                self.settle()
                elapsed = time.perf_counter() - self.started
                bar.set_postfix(loss=f"{self.history[-1]['loss']:.3f}",
                                tok_s=f"{self.tokens_seen / max(elapsed, 1e-9):.0f}")
            if self.selecting and (step + 1) % self.per_epoch == 0:
                self.validate(epoch)
            if (step + 1) % self.config.checkpoint_every == 0 and step + 1 < self.total_steps:
                self.save(step + 1)
        bar.close()
        self.settle()

    def step(self, step: int, epoch: int) -> None:
        """One optimizer step on the global batch ``step`` of ``epoch``: this process's micro-batches."""
        accelerator, world, rank = self.accelerator, self.accelerator.num_processes, self.accelerator.process_index
        if epoch not in self.orders:
            self.orders = {epoch: epoch_order(self.seed, self.generation, epoch, len(self.sequences))}
        index = step - epoch * self.per_epoch
        batch = self.config.batch_size
        global_batch = self.orders[epoch][index * batch:(index + 1) * batch]
        normalizer = float(np.sum(self.weights[global_batch] * np.maximum(self.lengths[global_batch] - 1, 0)))
        chunks = [global_batch[i:i + self.micro] for i in range(0, len(global_batch), self.micro)]
        mine = list(range(rank, len(chunks), world)) or [None]
        step_loss = torch.zeros((), device=accelerator.device)
        for k, chunk_index in enumerate(mine):
            chunk = global_batch[:0] if chunk_index is None else chunks[chunk_index]
            torch.manual_seed(derive_seed(self.seed, "dropout", self.generation, step, chunk_index or 0))
            sync = contextlib.nullcontext() if k == len(mine) - 1 else accelerator.no_sync(self.model)
            with sync:
                loss = chunk_loss(self.model, self.sequences, chunk, self.weights, self.pad_id, accelerator,
                                   normalizer, self.config.compile)
                # DDP averages gradients over processes; scaling by the world size turns that
                # average back into the sum the global normalizer expects.
                accelerator.backward(loss * world)
            step_loss += loss.detach()
        if self.config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        failpoint("train-step")
        if world > 1:
            step_loss = accelerator.reduce(step_loss, reduction="sum")
        batch_tokens = int(np.sum(self.lengths[global_batch]))
        self.tokens_seen += batch_tokens
        self.history.append({"step": step + 1, "epoch": epoch, "loss": None,
                             "lr": float(self.scheduler.get_last_lr()[0]), "tokens": batch_tokens})
        self.pending.append((self.history[-1], step_loss))

    def validate(self, epoch: int) -> None:
        """The validation loss after ``epoch``; the best epoch's weights kept beside the checkpoints.

        The same number on every process (validation_loss reduces exactly), so every process takes
        the same branch and calls the same collectives."""
        loss = validation_loss(self.model, self.validation, self.pad_id, self.accelerator, self.micro)
        if all(loss < v["loss"] for v in self.validations):  # the first of equal losses wins
            self.checkpointer.save_best(self.accelerator, self.model, epoch, loss)
        self.validations.append({"epoch": epoch, "loss": loss})
        log.info("%s: epoch %d validation loss %.4f", self.label, epoch, loss)

    def epoch_loss(self, epoch: int) -> float:
        losses = [h["loss"] for h in self.history if h["epoch"] == epoch]
        return float(np.mean(losses)) if losses else float("nan")

    def outcome(self) -> TrainOutcome:
        """The log: steps, tokens, seconds and the kept epoch (the last, or the best on validation)."""
        config = self.config
        seconds = self.earlier_seconds + time.perf_counter() - self.started
        kept_epoch, selection = config.epochs - 1, None
        if self.selecting:
            best = min(self.validations, key=lambda v: v["loss"])  # min keeps the first of equal losses
            kept_epoch = best["epoch"]
            selection = {"mode": config.select, "epoch": kept_epoch, "validation_loss": best["loss"],
                         "train_loss": self.epoch_loss(kept_epoch), "last_epoch": config.epochs - 1,
                         "last_validation_loss": self.validations[-1]["loss"], "validation_losses": self.validations,
                         "validation_blocks": len(self.validation)}
        log.info("%s: %d steps, kept epoch %d (train loss %.4f%s), %.0f tokens/s", self.label, self.total_steps,
                 kept_epoch, self.epoch_loss(kept_epoch),
                 f", validation loss {selection['validation_loss']:.4f}" if selection else "",
                 self.tokens_seen / max(time.perf_counter() - self.started, 1e-9))
        return TrainOutcome(self.total_steps, int(sum(h["tokens"] for h in self.history)), seconds,
                            self.epoch_loss(kept_epoch), self.history, self.resumed, selection)


def _release(loop: _Loop, outcome: TrainOutcome):
    """The plain module: without DDP, without accelerate's autocast wrapper on forward (dropped in
    ``_prepare``) and without torch.compile, i.e. exactly what from_pretrained gives after an
    interruption, so the stages after training compute the same whether or not the run was
    interrupted; the kept epoch's weights loaded, adapters merged."""
    config = loop.config
    trained = loop.accelerator.unwrap_model(loop.model, keep_fp32_wrapper=True, keep_torch_compile=False)
    if outcome.selection is not None and outcome.selection["epoch"] != config.epochs - 1:
        loop.checkpointer.load_best(trained, outcome.selection["epoch"])
    if config.gradient_checkpointing:
        trained.activation_checkpointing_disable()
        trained.disable_input_require_grads()  # the input hook enabling it registers, which it keeps
    if config.lora is not None:
        # The adapters merged into the weights: a plain model of the family, which every later
        # stage (generation, evaluation, init: previous) loads like a fully fine-tuned one; its
        # weights trainable again, as a model fresh from from_pretrained is.
        trained = trained.merge_and_unload().requires_grad_(True)
    return trained


def _drop_forward_wrapper(module) -> None:
    """Call the class's own ``forward`` again: accelerate's prepare sets an instance attribute
    ``forward`` (autocast and an fp32 cast of the outputs, under mixed precision) and keeps the
    original in ``_original_forward``. Deleting both is exact; accelerate's own unwrapping
    (``keep_fp32_wrapper=False``) also peels transformers' decorators off the class's forward
    (``@can_return_tuple``: ``return_dict=False`` then fails)."""
    module.__dict__.pop("forward", None)
    module.__dict__.pop("_original_forward", None)


def with_lora_adapters(model, config: TrainConfig, seed: int):
    """``model`` wrapped by ``peft`` with fresh low-rank adapters (seeded: a resumed run rebuilds
    the same ones before loading their trained state); only the adapters require gradients."""
    try:
        import peft
    except ImportError:
        raise LmcollapseError("train.lora needs the peft package: run `make install` (or pip install peft), "
                              "or set train.lora=null for full fine-tuning") from None
    settings = config.lora
    adapter = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                              target_modules=list(settings.target_modules) if settings.target_modules else None,
                              task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return peft.get_peft_model(model, adapter)
        except ValueError as err:  # e.g. target modules not found in this family
            raise LmcollapseError(f"train.lora: {error_reason(err, 200)}: set train.lora.target_modules to "
                                  "module names of this model (e.g. [q_proj, v_proj])") from None
