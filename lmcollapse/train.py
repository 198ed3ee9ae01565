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
* Every ``checkpoint_every`` steps, ``accelerator.save_state`` (model, optimizer, scheduler, RNG)
  plus ``trainer_state.json`` (step, loss log, data fingerprint, sha256 of each file) is written
  to ``.step-000123.tmp`` and renamed to ``step-000123`` once complete; the last
  ``keep_checkpoints`` are kept. Resumption takes the newest complete one by step number.

    outcome = train_model(model, sequences, config.train, seed=0, generation=1,
                          checkpoint_dir=gen / "checkpoints", accelerator=accelerator,
                          data_fingerprint=sha, pad_id=1)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmcollapse.atomic import (
    canonical_json,
    disk_full,
    fsync_dir,
    fsync_path,
    read_json,
    remove_path,
    sha256_file,
    temporary_sibling,
)
from lmcollapse.config import TrainConfig
from lmcollapse.errors import DiskFull, LmcollapseError, error_reason
from lmcollapse.failpoints import failpoint
from lmcollapse.interrupts import check_stop
from lmcollapse.metrics.perplexity import token_losses
from lmcollapse.progress import progress_bar
from lmcollapse.rundir import (
    BEST_FILE,
    BEST_NAME,
    STATE_FILE,
    Checkpoint,
    best_weights_path,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    steps_per_epoch,
)
from lmcollapse.seeding import derive_seed, rng

log = logging.getLogger(__name__)

# The best-epoch weights (rundir.best_weights_path) are kept until a checkpoint that knows a better
# epoch exists, so a resume from any kept checkpoint finds the weights its history names.


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
    n = len(sequences)
    if n == 0:
        raise LmcollapseError(f"{label} has an empty training set")
    selecting = config.select == "best-validation"
    if selecting and not validation:
        raise LmcollapseError(f"{label}: train.select=best-validation needs validation blocks, and there are none")
    world, rank = accelerator.num_processes, accelerator.process_index
    batch = config.batch_size
    micro = config.micro_batch_size or math.ceil(batch / world)
    per_epoch = steps_per_epoch(n, batch)
    total_steps = config.epochs * per_epoch
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)

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

    start_step, history, resumed, earlier_seconds, validations = 0, [], None, 0.0, []
    latest = latest_checkpoint(checkpoint_dir)
    if latest is not None:
        state = verify_checkpoint(latest, data_fingerprint)
        accelerator.load_state(str(latest.path))
        start_step, history, resumed = latest.step, list(state["log"]), latest.step
        earlier_seconds = float(state.get("seconds", 0.0))
        validations = list(state.get("validation", []))
        log.info("%s: resuming training at step %d of %d from %s", label, start_step, total_steps, latest.path)

    started = time.perf_counter()
    # Steps whose loss is still a device tensor: copied to the host together (settle), at most every
    # LOSS_EVERY steps and before anything reads the log, so that no step waits for the device to
    # finish the last one (a GPU then queues step n+1 while it computes step n).
    pending: list[tuple[dict, torch.Tensor]] = []

    def settle() -> None:
        if pending:
            for (entry, _), value in zip(pending, torch.stack([loss for _, loss in pending]).tolist()):
                entry["loss"] = float(value)
            pending.clear()

    def save(step: int) -> None:
        settle()
        save_checkpoint(accelerator, checkpoint_dir, step, history, data_fingerprint, config.keep_checkpoints,
                        earlier_seconds + time.perf_counter() - started, validation=validations)
        if selecting and accelerator.is_main_process:
            prune_best_weights(checkpoint_dir)

    model.train()
    tokens_seen = 0  # in this session, for the throughput shown
    orders: dict[int, np.ndarray] = {}
    bar = progress_bar(total=total_steps, initial=start_step, desc=f"train {label.replace('generation ', 'gen ')}",
                       unit="step", enabled=progress and accelerator.is_main_process)
    for step in range(start_step, total_steps):
        check_stop(f"while training {label} (step {step}/{total_steps})",
                   save=(lambda s=step: save(s)) if step > start_step else None, accelerator=accelerator)
        epoch, index = divmod(step, per_epoch)
        if epoch not in orders:
            orders = {epoch: epoch_order(seed, generation, epoch, n)}
        global_batch = orders[epoch][index * batch:(index + 1) * batch]
        normalizer = float(np.sum(weights[global_batch] * np.maximum(lengths[global_batch] - 1, 0)))
        chunks = [global_batch[i:i + micro] for i in range(0, len(global_batch), micro)]
        mine = list(range(rank, len(chunks), world)) or [None]

        step_loss = torch.zeros((), device=accelerator.device)
        for k, chunk_index in enumerate(mine):
            last = k == len(mine) - 1
            chunk = global_batch[:0] if chunk_index is None else chunks[chunk_index]
            torch.manual_seed(derive_seed(seed, "dropout", generation, step, chunk_index or 0))
            sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with sync:
                loss = _chunk_loss(model, sequences, chunk, weights, pad_id, accelerator, normalizer, config.compile)
                # DDP averages gradients over processes; scaling by the world size turns that
                # average back into the sum the global normalizer expects.
                accelerator.backward(loss * world)
            step_loss += loss.detach()
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        failpoint("train-step")

        if world > 1:
            step_loss = accelerator.reduce(step_loss, reduction="sum")
        batch_tokens = int(np.sum(lengths[global_batch]))
        tokens_seen += batch_tokens
        elapsed = time.perf_counter() - started
        history.append({"step": step + 1, "epoch": epoch, "loss": None,
                        "lr": float(scheduler.get_last_lr()[0]), "tokens": batch_tokens})
        pending.append((history[-1], step_loss))
        bar.update(1)
        if (step + 1) % LOSS_EVERY == 0 or step + 1 == total_steps:
            settle()
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):.0f}")
        if selecting and (step + 1) % per_epoch == 0:
            # The same number on every process (validation_loss reduces exactly), so every process
            # takes the same branch and calls the same collectives.
            loss = validation_loss(model, validation, pad_id, accelerator, micro)
            if all(loss < v["loss"] for v in validations):  # the first of equal losses wins
                save_best_weights(accelerator, model, checkpoint_dir, epoch, loss)
            validations.append({"epoch": epoch, "loss": loss})
            log.info("%s: epoch %d validation loss %.4f", label, epoch, loss)
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < total_steps:
            save(step + 1)
    bar.close()
    settle()
    seconds = earlier_seconds + time.perf_counter() - started

    def epoch_loss(epoch: int) -> float:
        losses = [h["loss"] for h in history if h["epoch"] == epoch]
        return float(np.mean(losses)) if losses else float("nan")

    kept_epoch, selection = config.epochs - 1, None
    if selecting:
        best = min(validations, key=lambda v: v["loss"])  # min keeps the first of equal losses
        kept_epoch = best["epoch"]
        selection = {"mode": config.select, "epoch": kept_epoch, "validation_loss": best["loss"],
                     "train_loss": epoch_loss(kept_epoch), "last_epoch": config.epochs - 1,
                     "last_validation_loss": validations[-1]["loss"], "validation_losses": validations,
                     "validation_blocks": len(validation)}
    log.info("%s: %d steps, kept epoch %d (train loss %.4f%s), %.0f tokens/s", label, total_steps, kept_epoch,
             epoch_loss(kept_epoch), f", validation loss {selection['validation_loss']:.4f}" if selection else "",
             tokens_seen / max(time.perf_counter() - started, 1e-9))
    outcome = TrainOutcome(total_steps, int(sum(h["tokens"] for h in history)), seconds, epoch_loss(kept_epoch),
                           history, resumed, selection)
    # The plain module: without DDP, without accelerate's autocast wrapper on forward (dropped
    # above) and without torch.compile, i.e. exactly what from_pretrained gives after an
    # interruption, so the stages after training compute the same whether or not the run was interrupted.
    trained = accelerator.unwrap_model(model, keep_fp32_wrapper=True, keep_torch_compile=False)
    if selecting and kept_epoch != config.epochs - 1:
        load_best_weights(trained, checkpoint_dir, kept_epoch)
    if config.gradient_checkpointing:
        trained.activation_checkpointing_disable()
        trained.disable_input_require_grads()  # the input hook enabling it registers, which it keeps
    if config.lora is not None:
        # The adapters merged into the weights: a plain model of the family, which every later
        # stage (generation, evaluation, init: previous) loads like a fully fine-tuned one; its
        # weights trainable again, as a model fresh from from_pretrained is.
        trained = trained.merge_and_unload().requires_grad_(True)
    del model, optimizer, scheduler
    accelerator.free_memory()
    return trained, outcome


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


def _chunk_loss(model, sequences, chunk, weights, pad_id, accelerator, normalizer, compiled: bool = False):
    if len(chunk) == 0:
        # This process has no block in a short last batch; DDP still needs its backward
        # pass to join the gradient all-reduce, so run a zero-weight one.
        ids = torch.full((1, 2), pad_id, dtype=torch.long, device=accelerator.device)
        with accelerator.autocast():
            logits = model(input_ids=ids, use_cache=False).logits
        return logits.float().sum() * 0.0
    device = accelerator.device
    ids, mask, targets = _padded_batch([sequences[i] for i in chunk], pad_id, device)
    row_weights = _to_device(torch.as_tensor(weights[chunk], dtype=torch.float32), device)
    with accelerator.autocast():
        summed = (_compiled_weighted_nll() if compiled else _weighted_nll)(model, ids, mask, targets, row_weights)
    return summed / max(normalizer, 1e-12)


def _padded_batch(rows: list, pad_id: int, device: torch.device):
    """Token ids (right-padded), the attention mask and next-token targets (-100 where none) of
    ``rows``, on ``device``. The mask is None when no row is padded: the model then uses SDPA's
    causal kernel directly (the same arithmetic) instead of checking a mask of ones, a check that
    on a GPU waits for every queued kernel."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    targets = torch.full((len(rows), longest), -100, dtype=torch.long)  # at t: token t+1, or -100
    for k, row in enumerate(rows):
        row = torch.as_tensor(np.asarray(row, dtype=np.int64))
        ids[k, :len(row)], mask[k, :len(row)], targets[k, :len(row) - 1] = row, 1, row[1:]
    padded = any(len(r) < longest for r in rows)
    return _to_device(ids, device), _to_device(mask, device) if padded else None, _to_device(targets, device)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU through pinned memory, without waiting: a copy from
    pageable memory first waits for every queued kernel, which would stall the step's launch
    until the previous step is done."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _weighted_nll(model, ids, mask, targets, row_weights):
    """The chunk's next-token NLL summed over its tokens, each row's weighted by its weight.

    ``use_cache=False``: a model's config asks for a KV cache by default, and with it every forward
    pass copies each layer's keys and values into a fresh cache that nothing reads (Trainer turns
    it off the same way); the logits do not change."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return (token_losses(logits, targets) * row_weights[:, None]).sum()


_COMPILED: dict[str, object] = {}


def _compiled_weighted_nll():
    """``_weighted_nll`` compiled once per process (``train.compile``): the model's forward and the
    loss over the vocabulary in one graph (compiling the model alone leaves the log-softmax, a
    large share of a small model's step, outside it). The compiled code is keyed by the function,
    not the model object, so the next generation's model of the same shape reuses it."""
    if "nll" not in _COMPILED:
        _COMPILED["nll"] = torch.compile(_weighted_nll)
    return _COMPILED["nll"]


@torch.no_grad()
def validation_loss(model, blocks: list[np.ndarray], pad_id: int, accelerator, batch_size: int) -> float:
    """Token-weighted mean NLL of ``blocks``, dropout off.

    The blocks are cut into fixed batches of ``batch_size``; process p scores batches p, p+P, ...;
    each block's summed NLL is placed at its index and the processes' vectors are added (every entry
    comes from one process, so the sum is exact), then summed in block order on every process. So
    every process holds the same number, and any number of processes gives the one-process value.
    """
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    per_block = np.zeros(len(blocks), dtype=np.float64)
    for number, start in enumerate(range(0, len(blocks), batch_size)):
        if number % world != rank:
            continue
        chunk = np.arange(start, min(start + batch_size, len(blocks)))
        per_block[chunk] = _block_nll(model, blocks, chunk, pad_id, accelerator).double().cpu().numpy()
    if world > 1:
        per_block = accelerator.reduce(torch.as_tensor(per_block, device=accelerator.device), reduction="sum").cpu().numpy()
    model.train()
    tokens = sum(max(len(block) - 1, 0) for block in blocks)
    return float(per_block.sum() / max(tokens, 1))


def _block_nll(model, sequences, chunk, pad_id, accelerator) -> torch.Tensor:
    """The summed next-token NLL of each block in ``chunk`` (padding excluded)."""
    ids, mask, targets = _padded_batch([sequences[i] for i in chunk], pad_id, accelerator.device)
    with accelerator.autocast():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return token_losses(logits, targets).sum(dim=1)


def save_best_weights(accelerator, model, checkpoint_dir: Path, epoch: int, loss: float) -> None:
    """The weights of the best epoch so far, beside the checkpoints (written whole or not at all)."""
    from safetensors.torch import save_model

    from lmcollapse.atomic import atomic_path

    if accelerator.is_main_process:
        plain = accelerator.unwrap_model(model, keep_fp32_wrapper=True, keep_torch_compile=False)
        with atomic_path(best_weights_path(checkpoint_dir, epoch)) as scratch:
            scratch.mkdir(parents=True)
            save_model(plain, str(scratch / "model.safetensors"))
            (scratch / BEST_FILE).write_text(canonical_json({"epoch": epoch, "loss": loss}), encoding="utf-8")
    accelerator.wait_for_everyone()


def prune_best_weights(checkpoint_dir: Path) -> None:
    """Remove the best-epoch weights no kept checkpoint can need: those of epochs before the best
    epoch that the *oldest* kept checkpoint already knows (a resume never goes back further)."""
    kept = list_checkpoints(checkpoint_dir)
    if not kept:
        return
    history = read_json(kept[0].path / STATE_FILE).get("validation", [])
    if not history:
        return
    known_best = min(history, key=lambda v: v["loss"])["epoch"]
    for path in checkpoint_dir.iterdir():
        match = BEST_NAME.match(path.name)
        if match and int(match.group(1)) < known_best:
            remove_path(path)


def load_best_weights(model, checkpoint_dir: Path, epoch: int) -> None:
    from safetensors.torch import load_model

    folder = best_weights_path(checkpoint_dir, epoch)
    recorded = read_json(folder / BEST_FILE) if (folder / BEST_FILE).is_file() else {}
    if recorded.get("epoch") != epoch:
        raise LmcollapseError(
            f"{folder} is missing or incomplete (the weights of epoch {epoch}, the best on validation): delete "
            f"{checkpoint_dir} to retrain this generation")
    load_model(model, str(folder / "model.safetensors"))


# ---------------------------------------------------------------------------- checkpoints

def verify_checkpoint(checkpoint: Checkpoint, data_fingerprint: str) -> dict:
    """Check a checkpoint's files against the sha256 it recorded and its data fingerprint."""
    try:
        state = read_json(checkpoint.path / STATE_FILE)
    except (OSError, ValueError):
        raise LmcollapseError(f"checkpoint {checkpoint.path} has an unreadable {STATE_FILE}: delete the folder to resume from an earlier checkpoint") from None
    if state.get("data_fingerprint") != data_fingerprint:
        raise LmcollapseError(
            f"checkpoint {checkpoint.path} was trained on other data (fingerprint does not match "
            "this generation's training set): delete the checkpoints folder to retrain from the start")
    for name, expected in state.get("files", {}).items():
        path = checkpoint.path / name
        if not path.is_file() or sha256_file(path) != expected:
            raise LmcollapseError(
                f"checkpoint file {path} is missing or does not match its recorded sha256 (truncated or "
                f"modified): delete {checkpoint.path} to resume from an earlier checkpoint")
    return state


def save_checkpoint(accelerator, checkpoint_dir: Path, step: int, history: list[dict],
                    data_fingerprint: str, keep: int, seconds: float = 0.0, validation: list[dict] | None = None) -> Path:
    final = checkpoint_path(checkpoint_dir, step)
    scratch = temporary_sibling(final)
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        remove_path(scratch)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(scratch), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = {p.name: sha256_file(p) for p in sorted(scratch.iterdir()) if p.is_file()}
            state = {"step": step, "data_fingerprint": data_fingerprint, "log": history, "files": files,
                     "seconds": seconds, "validation": validation or []}
            (scratch / STATE_FILE).write_text(canonical_json(state, indent=1), encoding="utf-8")
            fsync_path(scratch)
            failpoint("checkpoint-write")
            # NOTE: trainer_state.json is written last and the folder renamed in one step, so a
            # folder named step-NNNNNN is always complete.
            remove_path(final)
            os.replace(scratch, final)
            fsync_dir(checkpoint_dir)
            for old in list_checkpoints(checkpoint_dir)[:-keep]:
                remove_path(old.path)
    except BaseException as err:
        # NOTE: diagnose before cleaning up: removing the scratch frees the space that shows the
        # disk was full (torch's writer says only "unexpected pos ...").
        full = disk_full(err, checkpoint_dir)
        if accelerator.is_main_process:
            remove_path(scratch)  # a failed write (disk full) must not keep eating space
        if full is not None:
            raise DiskFull(f"disk full while writing checkpoint {final}: free space and rerun the same command; "
                           "completed stages are intact") from err
        raise
    accelerator.wait_for_everyone()
    return final
