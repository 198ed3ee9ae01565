"""Write a generation's synthetic corpus: the model continues every block of its training set.

As in the paper, each training block (or its last ``prompt_tokens`` tokens) is a prompt, and the
new tokens, without the prompt, become one record of the next generation's corpus, so the corpus
keeps the training set's size. Every decoding option in ``GenerateConfig`` goes into one
``transformers.GenerationConfig``; it is saved beside the shards and passed to ``generate``.

Work is cut into shards of ``shard_size`` prompts. A shard's sampling seed is derived from
(seed, generation, shard) and its prompts are batched in a fixed order (sorted by length, so
batches need little padding), so a shard regenerated after an interruption, or by another
process under ``accelerate launch``, is byte-identical. Each shard is written atomically with a
sidecar ``shard-00000.json`` holding its sha256; a shard counts as done only if both agree.

    shards = write_synthetic_corpus(model, tokenizer, prompts, config.generate, seed=0,
                                    generation=1, model_label="sha256:" + weights_sha256(gen / "model"),
                                    out_dir=gen / "synthetic", accelerator=accelerator)

``model_label`` is written into every record's ``model`` field: the sha256 of the weights, so the
shards name the model by content and do not depend on the folder the run lives in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from lmcollapse.config import GenerateConfig
from lmcollapse.data.records import SYNTHETIC, make_records, write_records
from lmcollapse.engine.precision import autocast
from lmcollapse.engine.shards import (
    BATCH_PROBE_FILE,
    GENERATION_CONFIG_FILE,
    completed_shard,
    shard_paths,
    shard_ranges,
)
from lmcollapse.engine.watermark import watermark_record, watermarking_config
from lmcollapse.errors import ConfigError
from lmcollapse.run.atomic import read_json, write_json_atomic
from lmcollapse.run.failpoints import failpoint
from lmcollapse.run.interrupts import check_stop
from lmcollapse.run.progress import progress_bar
from lmcollapse.run.seeding import derive_seed, rng

log = logging.getLogger(__name__)



def build_generation_config(config: GenerateConfig, tokenizer, seed: int = 0):
    """The ``GenerationConfig`` for ``config``; every value explicit, none left to library defaults.
    ``seed``: the run's, from which a watermark's key is derived."""
    from transformers import GenerationConfig

    settings = dict(
        num_beams=config.num_beams, do_sample=config.do_sample,
        repetition_penalty=config.repetition_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size,
        min_new_tokens=config.min_new_tokens, max_new_tokens=config.max_new_tokens,
        num_return_sequences=1, use_cache=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    if config.sampler == "inverse-cdf":  # the config allows it only with do_sample and one beam
        # A greedy step after InverseCdfSampler, the last logits processor: it applies the
        # filters itself and leaves one finite logit, the token it drew. It also keeps
        # end-of-text out for the first min_new_tokens steps: given min_new_tokens, generate adds
        # two processors for that one bound (MinLength and MinNewTokensLength), each copying and
        # rewriting every row's logits, about a tenth of a large batch's step on a CPU.
        settings.update(do_sample=False, min_new_tokens=None)
    elif config.do_sample:
        # Neutral values where the config says null: transformers would otherwise apply its
        # own defaults (top_k=50), a filter the user never asked for.
        settings.update(
            temperature=1.0 if config.temperature is None else config.temperature,
            top_k=0 if config.top_k is None else config.top_k,
            top_p=1.0 if config.top_p is None else config.top_p,
            typical_p=1.0 if config.typical_p is None else config.typical_p,
        )
    if config.num_beams > 1:
        settings.update(length_penalty=1.0, early_stopping=False)
    if config.cache_implementation == "static":
        settings.update(cache_implementation="static")
    if config.watermark and config.sampler != "inverse-cdf":  # the inverse-CDF sampler applies it itself
        settings.update(watermarking_config=watermarking_config(config, seed))
    generation_config = GenerationConfig(**settings)
    generation_config.validate(strict=True)
    return generation_config


class InverseCdfSampler(LogitsProcessor):
    """Ancestral sampling as the last logits processor before a greedy step (``generate.sampler:
    inverse-cdf``).

    It keeps end-of-text out for the first ``min_new_tokens`` steps (transformers'
    MinNewTokensLengthLogitsProcessor, which the stage leaves out of the GenerationConfig here:
    see ``build_generation_config``), applies the filters ``generate`` applies when it samples,
    in its order (temperature, top-k, top-p, typical; transformers' own warpers), then draws each
    sequence's token by inverting the cumulative distribution at one uniform variate, and leaves
    that token the only finite logit, so the greedy step takes it. The distribution is
    ``torch.multinomial``'s; the cost is one variate per sequence instead of one per vocabulary
    entry.

    It writes into the scores it is given rather than copying them (a copy of every row's logits
    per step is a measurable share of a CPU's step): ``generate`` hands its processors a fresh
    float32 copy of the logits each step, and the stage asks for neither scores nor logits back.

    ``uniforms`` holds each sequence's own variates, one per step (``record_uniforms``): which
    token a record gets does not depend on the batch it is in, its place there, or the batch size.
    ``watermark``: the run's watermark processor, applied after the filters as ``generate`` applies
    it after its own (its greedy step would otherwise see the bias after the draw).
    """

    def __init__(self, config: GenerateConfig, uniforms: torch.Tensor, prompt_length: int, *,
                 end_of_text: int | None, watermark=None):
        warpers = []
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None:
            warpers.append(TopKLogitsWarper(top_k=config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=config.top_p))
        if config.typical_p is not None and config.typical_p < 1.0:
            warpers.append(TypicalLogitsWarper(mass=config.typical_p))
        self.warpers = LogitsProcessorList(warpers + ([watermark] if watermark is not None else []))
        self.uniforms = uniforms  # (sequences, max_new_tokens), in [0, 1)
        self.prompt_length = prompt_length  # the (padded) prompt's length: the step is the length beyond it
        self.min_new_tokens = config.min_new_tokens
        self.end_of_text = end_of_text  # None: the tokenizer has no end-of-text token to keep out

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        if step < self.min_new_tokens and self.end_of_text is not None:
            scores[:, self.end_of_text] = float("-inf")
        scores = self.warpers(input_ids, scores)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
        draw = self.uniforms[:, step:step + 1].to(device=scores.device, dtype=cdf.dtype) * cdf[:, -1:]
        # The first token whose cumulative mass exceeds the draw: never one of probability 0.
        token = torch.searchsorted(cdf, draw, right=True).clamp_(max=scores.shape[-1] - 1)
        return scores.fill_(float("-inf")).scatter_(1, token, 0.0)


def record_uniforms(seed: int, generation: int, record_index: int, steps: int) -> np.ndarray:
    """The uniform variates the inverse-CDF sampler spends on one record: a stream of its own,
    keyed by the run's seed, the generation and the record's index in the corpus."""
    return rng(seed, "sample", generation, record_index).random(steps, dtype=np.float32)


def write_synthetic_corpus(model, tokenizer, prompts, config: GenerateConfig, *, seed: int, generation: int,
                           model_label: str, out_dir: Path, accelerator, progress: bool = True) -> list[dict]:
    """Continue every record of ``prompts`` (a records Dataset); return every shard's sidecar."""
    out_dir = Path(out_dir)
    generation_config = build_generation_config(config, tokenizer, seed)
    watermark = None
    if config.watermark and config.sampler == "inverse-cdf":
        watermark = watermarking_config(config, seed).construct_processor(model.config.get_text_config().vocab_size,
                                                                          next(model.parameters()).device)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        record = generation_config.to_diff_dict()
        if config.watermark:
            record["watermarking_config"] = watermark_record(config, seed)
        if config.sampler == "inverse-cdf":  # the greedy step above draws nothing itself
            record["lmcollapse_sampler"] = {"sampler": "inverse-cdf", "temperature": config.temperature,
                                            "top_k": config.top_k, "top_p": config.top_p, "typical_p": config.typical_p,
                                            "min_new_tokens": config.min_new_tokens}
        if config.attn_implementation is not None:
            record["lmcollapse_attn_implementation"] = config.attn_implementation
        write_json_atomic(out_dir / GENERATION_CONFIG_FILE, record)
    accelerator.wait_for_everyone()

    ranges = shard_ranges(len(prompts), config.shard_size)
    world, rank = accelerator.num_processes, accelerator.process_index
    missing = [i for i in range(len(ranges)) if completed_shard(out_dir, i) is None]
    todo = [i for i in missing if i % world == rank]
    with attention_implementation(model, config.attn_implementation):
        # Every process probes or none does (the probe ends at a barrier), whether or not this one has
        # shards left: they all see the same files here, since none is written before the probe.
        if config.batch_probe and missing:
            config = dataclasses.replace(config, batch_size=ensure_batch_probe(
                model, tokenizer, prompts, config, out_dir / BATCH_PROBE_FILE, accelerator))
        for index in todo:
            if shard_paths(out_dir, index)[1].is_file():
                log.warning("shard %d of %s does not match its recorded sha256: regenerating it", index, out_dir)
        model.eval()
        bar = progress_bar(total=sum(ranges[i][1] - ranges[i][0] for i in todo), desc=f"generate gen {generation}",
                           unit="sample", enabled=progress and accelerator.is_main_process)
        for index in todo:
            check_stop(f"while generating generation {generation}'s corpus (shard {index})")
            lo, hi = ranges[index]
            started = time.perf_counter()
            rows = prompts.select(range(lo, hi))
            uniforms = None
            if config.sampler == "inverse-cdf":
                uniforms = np.stack([record_uniforms(seed, generation, i, config.max_new_tokens) for i in range(lo, hi)])
            continuations = _continue_prompts(model, tokenizer, rows["input_ids"], config, generation_config,
                                              derive_seed(seed, "generate", generation, index), bar, uniforms,
                                              watermark=watermark)
            texts = tokenizer.batch_decode(continuations, skip_special_tokens=True)
            records = make_records({
                "id": [f"g{generation:02d}-{i:07d}" for i in range(lo, hi)],
                "source": [SYNTHETIC] * (hi - lo),
                "generation": [generation] * (hi - lo),
                "parent": rows["id"],
                "model": [model_label] * (hi - lo),
                "input_ids": [c.tolist() for c in continuations],
                "text": texts,
            })
            data, sidecar = shard_paths(out_dir, index)
            digest = write_records(records, data)
            new_tokens = int(sum(len(c) for c in continuations))
            # NOTE: the sidecar is written after the data; a shard without one is redone.
            write_json_atomic(sidecar, {"shard": index, "sha256": digest, "records": hi - lo, "first": lo,
                                        "new_tokens": new_tokens, "seconds": time.perf_counter() - started})
    bar.close()
    accelerator.wait_for_everyone()
    return [read_json(shard_paths(out_dir, i)[1]) for i in range(len(ranges))]


@contextlib.contextmanager
def attention_implementation(model, name: str | None):
    """``model`` with attention ``name`` (transformers' ``set_attn_implementation``) inside the
    block, and its own again after it, however the block ends: the model goes on to be scored."""
    own = model.config._attn_implementation
    if name is None or name == own:
        yield model
        return
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:  # transformers only warns for a model that cannot switch
        model.set_attn_implementation(own)
        raise ConfigError(f"generate.attn_implementation: {type(model).__name__} cannot switch its attention from "
                          f"{own} to {name} in place; set generate.attn_implementation=null (its own, {own})")
    try:
        yield model
    finally:
        model.set_attn_implementation(own)


@torch.no_grad()
def _continue_prompts(model, tokenizer, prompt_rows, config: GenerateConfig, generation_config, shard_seed: int,
                      bar, uniforms: np.ndarray | None = None, clock: StepClock | None = None,
                      watermark=None) -> list[np.ndarray]:
    prompts = [np.asarray(ids[-config.prompt_tokens:] if config.prompt_tokens else ids, dtype=np.int64)
               for ids in prompt_rows]
    order = np.argsort([len(p) for p in prompts], kind="stable")
    device = next(model.parameters()).device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    outputs: list[np.ndarray | None] = [None] * len(prompts)
    torch.manual_seed(shard_seed)
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]
        longest = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for k, i in enumerate(batch):  # left padding: the prompt ends where generation begins
            ids[k, longest - len(prompts[i]):] = torch.from_numpy(prompts[i])
            mask[k, longest - len(prompts[i]):] = 1
        processors = LogitsProcessorList([clock] if clock is not None else [])
        if uniforms is not None:
            processors.append(InverseCdfSampler(config, torch.from_numpy(uniforms[batch]), longest, end_of_text=eos,
                                                watermark=watermark))
        # The generation's own precision (generate.mixed_precision), not whatever training left.
        with autocast(config.mixed_precision, device):
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=generation_config, logits_processor=processors)
        new = generated[:, longest:].cpu().numpy()
        for k, i in enumerate(batch):
            outputs[i] = _until_end(new[k], eos)
        bar.update(len(batch))
        failpoint("generate-batch")
    return outputs  # type: ignore[return-value]


PROBE_GAIN = 1.05  # a doubling of the batch must be this much faster for the probe to try the next


def ensure_batch_probe(model, tokenizer, prompts, config: GenerateConfig, path: Path, accelerator) -> int:
    """The batch size ``generate.batch_probe`` chose for this corpus: probed once by the main
    process and recorded, then read back by every process and every resumed run."""
    if accelerator.is_main_process and not path.is_file():
        write_json_atomic(path, probe_batch_size(model, tokenizer, prompts, config))
    accelerator.wait_for_everyone()
    return int(read_json(path)["batch_size"])


class StepClock(LogitsProcessor):
    """Notes the time of every decoding step (logits processors run once a step, after the forward
    pass), changing nothing: the batch probe's stopwatch."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def probe_batch_size(model, tokenizer, prompts, config: GenerateConfig, steps: int = 8) -> dict:
    """Time a few decoding steps at batch_size, twice that, ... (up to a quarter of the prompts,
    a shard, at most 4,096) on the corpus's first prompts; stop when a doubling gains less than 5%
    (each try costs prompts, and a larger batch more memory for little) or, on a GPU, before 80% of
    its memory; return the smallest batch within 5% of the fastest, and every measurement.

    A batch's speed is the decoding's, max_new_tokens steps: its prefill (the prompts' forward
    pass) plus max_new_tokens - 1 times its step, the median of the probe's timed steps (a step
    that compiles, as transformers does on CUDA for a static cache and each new batch shape,
    does not count). Timing the probe's few steps as a whole would weigh the prefill eight times
    too much and favour small batches. The quarter bounds the probe's own cost: about a tenth of
    the stage on 2,048 prompts, where it stops the probe at 512 although 1,024 is faster."""
    device = next(model.parameters()).device
    steps = min(steps, config.max_new_tokens)
    # The stage's decoding, cut to `steps` tokens that every sequence runs (end-of-text kept out,
    # by generate's processors or the inverse-CDF sampler): each batch is timed over as many steps.
    probe_config = dataclasses.replace(config, min_new_tokens=steps, max_new_tokens=steps)
    short = build_generation_config(probe_config, tokenizer)
    # A quarter of the prompts, but never below the configured batch (nor above the prompts there
    # are); a batch never spans two shards.
    limit = min(max(len(prompts) // 4, min(config.batch_size, len(prompts))), config.shard_size, 4096)
    sizes = [config.batch_size * 2**k for k in range(13) if config.batch_size * 2**k <= limit] or [limit]
    sample = config.sampler == "inverse-cdf"

    def run(size: int) -> dict:
        rows = prompts.select(range(size))["input_ids"]
        uniforms = np.random.default_rng(0).random((size, steps), dtype=np.float32) if sample else None
        clock = StepClock(device)
        started = time.perf_counter()
        _continue_prompts(model, tokenizer, rows, dataclasses.replace(probe_config, batch_size=size), short, 0,
                          progress_bar(enabled=False), uniforms, clock)
        prefill, times = clock.times[0] - started, clock.times
        step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
        return {"batch_size": size, "prefill_seconds": prefill, "step_seconds": step,
                "new_tokens_per_second": size * config.max_new_tokens / (prefill + (config.max_new_tokens - 1) * step)}

    run(min(sizes[0], 8))  # the first call pays one-off costs: not part of any measurement
    tried: list[dict] = []
    for size in sizes:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            entry = run(size)
        except torch.OutOfMemoryError:
            tried.append({"batch_size": size, "out_of_memory": True})
            torch.cuda.empty_cache()
            break
        speed = entry["new_tokens_per_second"]
        if device.type == "cuda":
            entry["gpu_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        tried.append(entry)
        earlier = [t["new_tokens_per_second"] for t in tried[:-1] if "new_tokens_per_second" in t]
        if (earlier and speed < PROBE_GAIN * max(earlier)) or (
                device.type == "cuda" and torch.cuda.max_memory_allocated(device)
                > 0.8 * torch.cuda.get_device_properties(device).total_memory / 2):
            break  # doubling gained too little, or the next doubling would pass 80% of the memory
    measured = [t for t in tried if "new_tokens_per_second" in t]
    fastest = max((t["new_tokens_per_second"] for t in measured), default=0.0)
    # The smallest batch within 5% of the fastest: as fast, in less memory.
    best = next((t for t in measured if PROBE_GAIN * t["new_tokens_per_second"] >= fastest), {"batch_size": sizes[0]})
    log.info("generate.batch_probe: batch size %d (%s)", best["batch_size"],
             ", ".join(f"{t['batch_size']}: {t.get('new_tokens_per_second', 0):,.0f} tokens/s" for t in tried))
    return {"batch_size": best["batch_size"], "steps": steps, "device": str(device), "tried": tried}


def _until_end(tokens: np.ndarray, eos: int) -> np.ndarray:
    """The new tokens up to and including the first end-of-text (what follows is padding)."""
    ends = np.flatnonzero(tokens == eos)
    return (tokens[: ends[0] + 1] if len(ends) else tokens).astype(np.int32)


