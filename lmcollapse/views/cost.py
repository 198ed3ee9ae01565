"""What a pipeline will cost on this device, before it runs (``make dry-run``): parameters, the
memory training and generation need, and the seconds each stage takes.

Memory is counted from the shapes: fp32 weights; for training, a gradient and AdamW's two moments
per trainable parameter (all of them, or the LoRA adapters'), the activations autograd keeps
(about 34 values per token, layer and unit of width, as Korthikanti et al. 2022 count them for a
transformer layer, ~1/L of that with gradient checkpointing) and the logits with their log-softmax
and gradient; for generation, the key/value cache of every beam at full length and the last
step's logits with the processors' copies.

Time is FLOPs over a rate. FLOPs per token: 6N + 12 L d T to train (PaLM's count), 2N + 4 L d T
forward (to score or to generate, per beam). The rate is this device's matmul peak (timed here on
a CPU: a 2048-square fp32 product, best of three; a GPU's dense bf16 peak from its specification)
times the fraction of that peak each stage reached in ``make bench`` (``MEASURED_FRACTION``). So
the estimate is as good as those benchmarks are for the model at hand: tiny models on a CPU, the
opt-125m shape on an H200.
"""

from __future__ import annotations

import dataclasses
import os
import time

from lmcollapse.config import PipelineConfig

# The share of the matmul peak each stage reached in whole pipeline runs (stage seconds from the
# manifests): cpu, `make run` (pipelines/tiny.yaml: tiny-opt, fp32, sampling) on two x86-64 cores,
# 2026-11-26 with the command line's allocator settings (engine/allocator.py); cuda, `make gpu-check`
# (pipelines/gpu-check.yaml: the opt-125m shape, bf16, 5-way beam search) on one H200. Beam search
# on a CPU and sampling on a GPU were not run in a pipeline: make bench's shares.
MEASURED_FRACTION = {
    "cpu": {"train": 0.65, "sample": 0.16, "beam": 0.33, "score": 0.56},
    "cuda": {"train": 0.054, "sample": 0.005, "beam": 0.0164, "score": 0.0275},
}
GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
ACTIVATION_VALUES_PER_TOKEN_LAYER_WIDTH = 34  # Korthikanti et al. 2022, without the attention scores


@dataclasses.dataclass(frozen=True)
class Shape:
    parameters: int
    layers: int
    width: int
    vocab: int
    trainable: int  # all parameters, or the LoRA adapters'


@dataclasses.dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "cuda"
    name: str
    memory_bytes: int
    matmul_peak: float  # FLOP/s
    how: str


@dataclasses.dataclass(frozen=True)
class Estimate:
    train_bytes: float
    generate_bytes: float
    seconds: dict[str, float]  # per stage, per generation (pretraining once)
    disk_bytes: float = 0.0  # what one generation leaves on disk


def shape_of(config: PipelineConfig) -> Shape | None:
    """The model's size, from a preset's shape or a local model folder's config.json, on the meta
    device; None where only the hub knows it and the hub is not asked."""
    from pathlib import Path

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmcollapse.engine.modeling import check_model_folder, family_config

    if config.model.is_preset:
        class Vocabulary:  # the preset's vocabulary size, before any tokenizer is trained
            pad_token_id = bos_token_id = eos_token_id = None

            def __len__(self) -> int:
                return int(config.model.architecture()["vocab_size"])

        model_config = family_config(config.model, Vocabulary())
    elif (Path(config.model.name).expanduser() / "config.json").is_file():
        folder = Path(config.model.name).expanduser()
        check_model_folder(folder, config.model.trust_remote_code)  # refused here too: no code runs for a plan
        model_config = AutoConfig.from_pretrained(folder, trust_remote_code=config.model.trust_remote_code)
    else:
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.model.trust_remote_code)
    text = model.config.get_text_config()
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0))
    width = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
    parameters = sum(p.numel() for p in model.parameters())
    trainable = parameters
    if config.train.lora is not None:
        trainable = _lora_parameters(model, config.train)
    return Shape(parameters, layers, width, int(text.vocab_size), trainable)


def _lora_parameters(model, train) -> int:
    """The adapters' parameters, counted by wrapping the meta-device model as training will (peft
    missing: two rank-r adapters of width x width per layer, peft's default for these families)."""
    import torch

    lora = train.lora
    try:
        import peft
    except ImportError:
        text = model.config.get_text_config()
        width = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
        layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0))
        return layers * 2 * lora.r * 2 * width
    adapter = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                              target_modules=list(lora.target_modules) if lora.target_modules else None)
    with torch.device("meta"):
        wrapped = peft.get_peft_model(model, adapter)
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def this_device(measure: bool = True) -> Device:
    """The device the stages will run on, its memory and matmul peak (timed on a CPU)."""
    import torch

    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        peak = next((v for k, v in GPU_BF16_PEAK.items() if k in properties.name), None)
        how = "dense bf16 peak (specification)"
        if peak is None:
            peak, how = _timed_matmul(torch.device("cuda"), torch.bfloat16, 8192), "a timed 8192-square bf16 matmul"
        return Device("cuda", properties.name, int(properties.total_memory), peak, how)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    threads = torch.get_num_threads()
    peak = _timed_matmul(torch.device("cpu"), torch.float32, 2048) if measure else 0.0
    return Device("cpu", f"CPU, {threads} threads", int(memory), peak, f"a timed 2048-square fp32 matmul, {threads} threads")


def _timed_matmul(device, dtype, size: int) -> float:
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def estimate(config: PipelineConfig, shape: Shape, device: Device, train_blocks: int, heldout_tokens: int,
             validation_blocks: int = 0, pretrain_tokens: int = 0) -> Estimate:
    """Memory and seconds per stage of one generation trained on ``train_blocks`` blocks."""
    train, gen, ev, data = config.train, config.generate, config.evaluate, config.data
    block, layers, width, vocab = data.block_size, shape.layers, shape.width, shape.vocab
    micro = train.micro_batch_size or train.batch_size
    kept = 1 if train.gradient_checkpointing else layers
    activation_bytes = 4 if train.mixed_precision == "no" else 2  # autocast keeps them in half precision
    activations = micro * block * (kept * ACTIVATION_VALUES_PER_TOKEN_LAYER_WIDTH * width * activation_bytes
                                   + 3 * vocab * 4)  # logits, log-softmax and their gradient in fp32
    train_bytes = 4 * shape.parameters + 12 * shape.trainable + activations

    beams, prompt = gen.num_beams, config.prompt_length
    length = prompt + gen.max_new_tokens
    kv_bytes = 2 if gen.mixed_precision != "no" else 4  # the cache is kept in the generation's precision
    cache = 2 * layers * width * length * gen.batch_size * beams * kv_bytes
    generate_bytes = 4 * shape.parameters + cache + 4 * gen.batch_size * beams * vocab * 4

    fraction = MEASURED_FRACTION[device.kind]
    rate = device.matmul_peak or 1.0

    def forward(tokens: float, context: float) -> float:
        return tokens * (2 * shape.parameters + 4 * layers * width * context)

    trained_tokens = train.epochs * train_blocks * block
    train_flops = 3 * forward(trained_tokens, block / 2) + train.epochs * forward(validation_blocks * block, block / 2)
    new_tokens = train_blocks * gen.max_new_tokens * beams
    generate_flops = beams * forward(train_blocks * prompt, prompt / 2) + forward(new_tokens, prompt + gen.max_new_tokens / 2)
    # held-out blocks (with and without end-of-text targets from one pass), the sliding window,
    # the tails (the synthetic corpus scored by generation 0's model)
    score_tokens = heldout_tokens * (1 + ev.window / ev.stride) + (train_blocks * gen.max_new_tokens if ev.tails else 0)
    score_flops = forward(score_tokens, ev.window / 2)
    seconds = {
        "train": train_flops / (rate * fraction["train"]),
        "generate": generate_flops / (rate * fraction["beam" if beams > 1 else "sample"]),
        "evaluate": score_flops / (rate * fraction["score"]),
    }
    if pretrain_tokens:
        seconds["pretrain (once)"] = 3 * forward(pretrain_tokens, config.pretrain.block_size / 2) / (rate * fraction["train"])
    # A generation keeps its weights (fp32) and two corpora of train_blocks records, its training
    # set and its synthetic text, each token about 8 bytes in Parquet (an int32 id, its text).
    disk_bytes = 4 * shape.parameters + train_blocks * 8 * (block + prompt + gen.max_new_tokens)
    return Estimate(train_bytes, generate_bytes, seconds, disk_bytes)


def describe_cost(config: PipelineConfig, device: Device, shape: Shape | None, train_blocks: int | None,
                  heldout_tokens: int, validation_blocks: int, pretrain_tokens: int, generations: int) -> list[str]:
    """The plan's cost lines: sizes, memory against the device's, seconds per stage; a warning
    with the settings that help where it will not fit."""
    lines = [f"cost on this device ({device.name}, {device.memory_bytes / 1e9:.1f} GB, matmul peak "
             f"{device.matmul_peak / 1e9:,.0f} GFLOP/s: {device.how}); estimates from the measured cost model:"]
    if shape is None:
        lines.append(f"  {config.model.name} is on the hub: its size is known once it is downloaded (no estimate)")
        return lines
    if train_blocks is None:
        lines.append("  the training set's size is unknown until the corpus is read (no estimate)")
        return lines
    cost = estimate(config, shape, device, train_blocks, heldout_tokens, validation_blocks, pretrain_tokens)
    trainable = "" if shape.trainable == shape.parameters else f", {shape.trainable / 1e6:.2f}M of them trained (LoRA)"
    lines.append(f"  model: {shape.parameters / 1e6:.2f}M parameters{trainable}; {shape.layers} layers x {shape.width}, "
                 f"vocabulary {shape.vocab}")
    lines.append(f"  memory: training ~{cost.train_bytes / 1e9:.2f} GB (micro-batch "
                 f"{config.train.micro_batch_size or config.train.batch_size}), generation ~{cost.generate_bytes / 1e9:.2f} GB "
                 f"(batch {config.generate.batch_size} x {config.generate.num_beams} beam(s))")
    per_generation = sum(v for k, v in cost.seconds.items() if k != "pretrain (once)")
    stages = ", ".join(f"{k} ~{duration(v)}" for k, v in cost.seconds.items())
    lines.append(f"  time per generation (generation 0's size): {stages}; ~{duration(per_generation)} a generation, "
                 f"~{duration(per_generation * generations + cost.seconds.get('pretrain (once)', 0))} for {generations}")
    if device.kind == "cuda" and config.generate.num_beams == 1:
        lines.append("  (sampling on a GPU: make bench's rate; no pipeline has sampled on a GPU yet)")
    budget = 0.9 * device.memory_bytes
    if cost.train_bytes > budget:
        lines.append(f"  WARNING: training needs ~{cost.train_bytes / 1e9:.1f} GB, more than this device's "
                     f"{device.memory_bytes / 1e9:.1f} GB: lower train.micro_batch_size, or set "
                     "train.gradient_checkpointing=true or train.lora.r=8")
    if cost.generate_bytes > budget:
        lines.append(f"  WARNING: generation needs ~{cost.generate_bytes / 1e9:.1f} GB, more than this device's "
                     f"{device.memory_bytes / 1e9:.1f} GB: lower generate.batch_size")
    return lines


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
