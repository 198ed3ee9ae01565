"""Models and tokenizers: presets built from config, pretrained ones loaded, all saved alike.

A preset (``tiny-opt``, ``opt-125m``, ``tiny-gpt2``, ``tiny-pythia``, ``tiny-llama``, ...; see
config/presets.py) is its family's transformers config built with fresh, seeded weights and a byte-level
BPE tokenizer with that family's special tokens (``</s>`` opens every line for OPT, ``<s>`` for
Llama, nothing for GPT-2, Pythia and Qwen2, as their own tokenizers do), trained on the pretraining corpus (stages/pretrain.py), or on the human train split
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

import json
import logging
import shlex
from collections.abc import Iterable
from pathlib import Path

import torch

from lmcollapse.config import ModelConfig
from lmcollapse.config.presets import TOKEN_CONVENTIONS
from lmcollapse.errors import LmcollapseError, error_reason
from lmcollapse.run.atomic import atomic_path, canonical_json, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def train_bpe_tokenizer(lines: Iterable[str], vocab_size: int, max_length: int = 2048, family: str = "opt"):
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``lines``, with ``family``'s special
    tokens at the start of the vocabulary and its conventions: which token opens every text (OPT's
    ``</s>``, Llama's ``<s>``, none for GPT-2, Pythia and Qwen2), which ends it, which pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    convention = TOKEN_CONVENTIONS[family]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(convention.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(lines, trainer=trainer)
    if convention.prepend is not None:
        first = convention.prepend
        backend.post_processor = processors.TemplateProcessing(
            single=f"{first} $A", pair=f"{first} $A {first} $B", special_tokens=[(first, backend.token_to_id(first))])
    specials = {"bos_token": convention.bos, "eos_token": convention.eos, "pad_token": convention.pad,
                "unk_token": convention.unk}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_length,
                                        **{k: v for k, v in specials.items() if v is not None})
    return prepare_tokenizer(tokenizer)


def family_config(config: ModelConfig, tokenizer):
    """The transformers config of ``config``'s preset in its family's own class and names, sized
    to ``tokenizer``'s vocabulary and carrying its special ids."""
    from transformers import AutoConfig

    shape = config.architecture()
    width, layers, heads = shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"]
    ffn, positions, dropout = shape["ffn_dim"], shape["max_position_embeddings"], shape["dropout"]
    family = config.family
    if family == "opt":
        # Dropout on the residual stream only, as facebook/opt-* are configured.
        native = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
                      max_position_embeddings=positions, dropout=dropout, word_embed_proj_dim=width,
                      attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0)
    elif family == "gpt2":
        native = dict(n_embd=width, n_layer=layers, n_head=heads, n_inner=ffn, n_positions=positions,
                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    elif family == "gpt_neox":
        native = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                      max_position_embeddings=positions, hidden_dropout=dropout, attention_dropout=dropout,
                      tie_word_embeddings=False)
    else:  # llama, qwen2: attention dropout is the only dropout these families have
        native = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      intermediate_size=ffn, max_position_embeddings=positions, attention_dropout=dropout,
                      tie_word_embeddings=family == "qwen2")
    return AutoConfig.for_model(
        family, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, attn_implementation=config.attn_implementation, **native)


def build_preset_model(config: ModelConfig, tokenizer, seed: int):
    """Fresh, seeded weights in the preset's shape and family, sized to ``tokenizer``'s vocabulary."""
    from transformers import AutoModelForCausalLM

    model_config = family_config(config, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(model_config, attn_implementation=config.attn_implementation)
    return model


def load_model(name_or_path: str | Path, attn_implementation: str = "sdpa", with_tokenizer: bool = True,
               trust_remote_code: bool = False):
    """``from_pretrained`` with fp32 weights and a one-line error for anything unloadable.

    NOTE: weights load from safetensors only (a pickle can run code when unpickled), and a model's
    own Python code runs only with ``trust_remote_code`` (``model.trust_remote_code``), always
    passed explicitly: transformers would otherwise ask on the terminal, and a yes runs it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = Path(name_or_path).expanduser()
    if location.exists() or location.is_symlink():
        check_model_folder(location, trust_remote_code)
    source = str(location) if location.exists() else str(name_or_path)
    try:
        # NOTE: transformers 5 loads in the checkpoint's dtype by default (fp16 for
        # facebook/opt-125m); training needs fp32 master weights, precision is autocast's job.
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation=attn_implementation,
                                                     use_safetensors=True, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code) if with_tokenizer else None
    except Exception as err:  # noqa: BLE001 - a model's own code (trusted) may raise anything
        raise _load_error(name_or_path, err) from None
    if tokenizer is not None:
        tokenizer = prepare_tokenizer(tokenizer)
    return model, tokenizer


def load_tokenizer(folder: str | Path, trust_remote_code: bool = False):
    """A saved model's tokenizer, prepared for batched generation (``prepare_tokenizer``)."""
    from transformers import AutoTokenizer

    try:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code))
    except (OSError, ValueError) as err:
        raise _load_error(folder, err) from None


def _load_error(name_or_path: str | Path, err: Exception) -> LmcollapseError:
    reason = error_reason(err, 200)
    if not isinstance(err, (OSError, ValueError)):
        reason = f"{type(err).__name__}: {reason}"
    if "trust_remote_code" in str(err):
        return LmcollapseError(
            f"model {name_or_path} needs its own Python code to load, and lmcollapse runs no code from a model unless "
            f"asked: read that code, then set model.trust_remote_code=true (SET=\"model.trust_remote_code=true\")")
    if "safetensors" in str(err) and "no file named" in str(err):
        return LmcollapseError(
            f"model {name_or_path} has no safetensors weights, and weights in pickle format cannot be loaded safely "
            "(unpickling can run code): use a model published with model.safetensors, or convert a copy you trust "
            "to safetensors and set model.name to it")
    return LmcollapseError(
        f"model {name_or_path} could not be loaded ({reason}): check model.name, or the network "
        "for hub ids (HF_HUB_OFFLINE=1 uses the local cache only)")


def check_model_folder(location: Path, trust_remote_code: bool = False) -> None:
    """One-line errors for a local model path that ``from_pretrained`` could not load, or should
    not: weights only in pickle format, or code of its own that the user has not trusted."""
    if location.is_symlink() and not location.exists():
        raise LmcollapseError(f"model path {location} is a broken or looping symbolic link: point model.name at the "
                              "folder itself")
    if not location.is_dir():
        raise LmcollapseError(f"model path {location} is a file: name the folder that holds config.json and the weights")
    if not (location / "config.json").is_file():
        raise LmcollapseError(f"model folder {location} has no config.json: point model.name at a folder saved with save_pretrained")
    if not any((location / name).is_file() for name in SAFE_WEIGHT_FILES):
        pickled = [name for name in PICKLE_WEIGHT_FILES if (location / name).is_file()]
        if pickled:
            raise LmcollapseError(
                f"model folder {location} holds its weights in pickle format ({pickled[0]}), which cannot be loaded "
                f"safely (unpickling can run code): convert them to safetensors where you trust the file: "
                f"{convert_command(location)}, then set model.name={shlex.quote(str(location))}-safetensors")
        raise LmcollapseError(
            f"model folder {location} has no weights (model.safetensors): "
            "copy them in, or use a preset such as model.name=tiny-opt")
    try:
        model_config = json.loads((location / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LmcollapseError(f"model folder {location}: config.json is not valid JSON ({error_reason(err)}): restore "
                              "it from where the model came from") from None
    if not isinstance(model_config, dict):
        raise LmcollapseError(f"model folder {location}: config.json is not a JSON object: restore it from where the "
                              "model came from")
    if model_config.get("auto_map") and not trust_remote_code and not _known_model_type(model_config.get("model_type")):
        code = sorted({str(v).split(".")[0] + ".py" for v in model_config["auto_map"].values() if isinstance(v, str)})
        raise LmcollapseError(
            f"model folder {location} ships its own Python code ({', '.join(code) or 'auto_map in config.json'}; "
            f"model_type {model_config.get('model_type')!r} is not one transformers knows), and lmcollapse runs no "
            "code from a model unless asked: read that code, then set model.trust_remote_code=true "
            "(SET=\"model.trust_remote_code=true\")")


def _known_model_type(model_type) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES


def convert_command(folder: Path) -> str:
    """A shell command that saves ``folder``'s model and tokenizer again, with safetensors weights,
    into ``<folder>-safetensors`` (transformers reads the pickle with ``weights_only=True``)."""
    import sys

    target = f"{folder}-safetensors"
    code = ("from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; "
            f"s, d = {str(folder)!r}, {target!r}; M.from_pretrained(s).save_pretrained(d); "
            "T.from_pretrained(s).save_pretrained(d)")
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


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


def position_limit(model, default: int = 1024) -> int:
    """The most tokens a model can read at once (its position embeddings), whatever its family calls them."""
    config = model.config
    return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or default)


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
