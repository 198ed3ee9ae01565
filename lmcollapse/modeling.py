"""Models and tokenizers: presets built from config, pretrained ones loaded, all saved alike.

A preset (``tiny-opt``, ``opt-125m``) is an ``OPTConfig`` built with fresh, seeded weights and a
byte-level BPE tokenizer with OPT's special tokens (``</s>`` opens every line, as OPT's own
tokenizer does), trained on the pretraining corpus (pretrain.py), or on the human train split
for a preset used from scratch (``pretrain.corpus: null``). A pretrained model is loaded with
``from_pretrained`` from a hub id or a local folder. Either way the run keeps its own copy in
``base/model`` (weights, config, tokenizer), so every generation loads the same bytes with
``from_pretrained``, whatever happens to the hub later.

    tokenizer = train_bpe_tokenizer(lines, vocab_size=4096)
    model = build_preset_model(config.model, tokenizer, seed=0)
    save_model(model, tokenizer, run / "base" / "model")
    model, tokenizer = load_model(run / "base" / "model")
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from lmcollapse.atomic import atomic_path, canonical_json, sha256_bytes, sha256_file
from lmcollapse.config import ModelConfig
from lmcollapse.errors import LmcollapseError

log = logging.getLogger(__name__)

# OPT's special tokens, at OPT's ids, so presets and facebook/opt-* agree on bos/eos/pad.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
PAD_ID, EOS_ID = 1, 2
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def train_bpe_tokenizer(lines: Iterable[str], vocab_size: int, max_length: int = 2048):
    """A byte-level BPE tokenizer (GPT-2/OPT style) trained on ``lines``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(lines, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", EOS_ID)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=max_length)
    return prepare_tokenizer(tokenizer)


def build_preset_model(config: ModelConfig, tokenizer, seed: int):
    """Fresh, seeded weights in the preset's shape, sized to ``tokenizer``'s vocabulary."""
    from transformers import AutoModelForCausalLM, OPTConfig

    shape = config.architecture()
    shape["vocab_size"] = len(tokenizer)
    opt_config = OPTConfig(
        **shape, word_embed_proj_dim=shape["hidden_size"], attention_dropout=0.0,
        activation_dropout=0.0, layerdrop=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        attn_implementation=config.attn_implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(opt_config, attn_implementation=config.attn_implementation)
    return model


def load_model(name_or_path: str | Path, attn_implementation: str = "sdpa", with_tokenizer: bool = True):
    """``from_pretrained`` with fp32 weights and a one-line error for anything unloadable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = Path(name_or_path).expanduser()
    if location.exists():
        check_model_folder(location)
    source = str(location) if location.exists() else str(name_or_path)
    try:
        # NOTE: transformers 5 loads in the checkpoint's dtype by default (fp16 for
        # facebook/opt-125m); training needs fp32 master weights, precision is autocast's job.
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation=attn_implementation)
        tokenizer = AutoTokenizer.from_pretrained(source) if with_tokenizer else None
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise LmcollapseError(
            f"model {name_or_path} could not be loaded ({first}): check model.name, or the network "
            "for hub ids (HF_HUB_OFFLINE=1 uses the local cache only)") from None
    if tokenizer is not None:
        tokenizer = prepare_tokenizer(tokenizer)
    return model, tokenizer


def check_model_folder(location: Path) -> None:
    """One-line errors for a local model path that ``from_pretrained`` could not load."""
    if not location.is_dir():
        raise LmcollapseError(f"model path {location} is a file: name the folder that holds config.json and the weights")
    if not (location / "config.json").is_file():
        raise LmcollapseError(f"model folder {location} has no config.json: point model.name at a folder saved with save_pretrained")
    if not any((location / name).is_file() for name in WEIGHT_FILES):
        raise LmcollapseError(
            f"model folder {location} has no weights ({', '.join(WEIGHT_FILES[::2])}): "
            "copy them in, or use a preset such as model.name=tiny-opt")


def save_model(model, tokenizer, folder: Path, extra_files: dict[str, str] | None = None) -> None:
    """``save_pretrained`` model and tokenizer into ``folder``, atomically (all or nothing)."""
    with atomic_path(Path(folder)) as scratch:
        scratch.mkdir()
        model.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
        for name, text in (extra_files or {}).items():
            (scratch / name).write_text(text, encoding="utf-8")


def weights_sha256(folder: Path) -> str:
    """The sha256 of a saved model's weights: of ``model.safetensors``, or for a sharded save, of
    the canonical JSON mapping each weight file to its sha256. Names a model by content."""
    folder = Path(folder)
    single = folder / "model.safetensors"
    if single.is_file():
        return sha256_file(single)
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise LmcollapseError(f"model folder {folder} has no .safetensors weights: delete it and rerun to rebuild it")
    return sha256_bytes(canonical_json({p.name: sha256_file(p) for p in shards}).encode())


def end_of_text_ids(tokenizer) -> tuple[int, ...]:
    """The tokenizer's BOS and EOS ids (one id for OPT, whose ``</s>`` is both), sorted."""
    return tuple(sorted({t for t in (tokenizer.eos_token_id, tokenizer.bos_token_id) if t is not None}))


def prepare_tokenizer(tokenizer):
    # Decoder-only batched generation pads on the left; models without a pad token reuse eos.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
