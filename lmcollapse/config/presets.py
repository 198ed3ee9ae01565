"""Architecture presets: model shapes built from config with fresh weights (then pretrained, see
pretrain.py), in the model families researchers study collapse with.

Kept free of heavy imports so that config validation can name the presets without loading torch.
A preset's shape uses one set of names whatever its family (OPT's: ``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``ffn_dim``, ``max_position_embeddings``,
``dropout``, ``vocab_size``); ``modeling.family_config`` writes it in the family's own config class.
The vocabulary size comes from the BPE tokenizer trained for it (``model.vocab_size``), which
follows the family's conventions for its special tokens (``TOKEN_CONVENTIONS``).
"""

from __future__ import annotations

from dataclasses import dataclass

TINY: dict[str, int | float] = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "ffn_dim": 512,
    "max_position_embeddings": 256,
    "dropout": 0.1,
    "vocab_size": 4096,
}

ARCHITECTURE_PRESETS: dict[str, dict[str, int | float]] = {
    # The facebook/opt-125m shape (Zhang et al. 2022), for GPU runs that pretrain their own base.
    "opt-125m": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "ffn_dim": 3072,
        "max_position_embeddings": 2048,
        "dropout": 0.1,
        "vocab_size": 50272,
    },
    # A 2-layer OPT that trains at ~10k tokens/s on two CPU cores: the demo and test model.
    "tiny-opt": TINY,
    # The gpt2 (124M) and EleutherAI/pythia-160m shapes, for GPU runs of those families.
    "gpt2-124m": {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072,
        "max_position_embeddings": 1024, "dropout": 0.1, "vocab_size": 50257,
    },
    "pythia-160m": {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072,
        "max_position_embeddings": 2048, "dropout": 0.0, "vocab_size": 50304,
    },
    # tiny-opt's size in the other families (CPU runs and tests of each family's conventions), with
    # their own conventions: no dropout in Pythia, Llama and Qwen2; a gated MLP of ~8/3 the width.
    "tiny-gpt2": TINY,
    "tiny-pythia": {**TINY, "dropout": 0.0},
    "tiny-llama": {**TINY, "ffn_dim": 344, "dropout": 0.0},
    "tiny-qwen2": {**TINY, "ffn_dim": 344, "dropout": 0.0},
}

# The transformers model type each preset is built as (its config class: modeling.family_config).
PRESET_FAMILIES: dict[str, str] = {
    "opt-125m": "opt", "tiny-opt": "opt", "gpt2-124m": "gpt2", "tiny-gpt2": "gpt2",
    "pythia-160m": "gpt_neox", "tiny-pythia": "gpt_neox", "tiny-llama": "llama", "tiny-qwen2": "qwen2",
}


@dataclass(frozen=True)
class TokenConvention:
    """A family's special tokens, as its released tokenizers have them: which exist (in id order),
    which is BOS, EOS, padding and unknown (None: the family has none), and which one the tokenizer
    puts before every text it encodes (None: nothing)."""

    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    prepend: str | None


TOKEN_CONVENTIONS: dict[str, TokenConvention] = {
    # facebook/opt-*: </s> opens every text; <pad> pads.
    "opt": TokenConvention(("<s>", "<pad>", "</s>", "<unk>"), bos="</s>", eos="</s>", pad="<pad>", unk="<unk>",
                           prepend="</s>"),
    # gpt2: one special token, nothing prepended, no padding token (generation pads with EOS).
    "gpt2": TokenConvention(("<|endoftext|>",), bos="<|endoftext|>", eos="<|endoftext|>", pad=None,
                            unk="<|endoftext|>", prepend=None),
    # EleutherAI/pythia-*: <|endoftext|> and <|padding|> at ids 0 and 1, nothing prepended, no pad token set.
    "gpt_neox": TokenConvention(("<|endoftext|>", "<|padding|>"), bos="<|endoftext|>", eos="<|endoftext|>",
                                pad=None, unk="<|endoftext|>", prepend=None),
    # Llama 2: <unk> <s> </s> at ids 0-2, <s> opens every text, no pad token.
    "llama": TokenConvention(("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>", pad=None, unk="<unk>", prepend="<s>"),
    # Qwen2 base models: no BOS at all, <|endoftext|> ends text and pads.
    "qwen2": TokenConvention(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None, eos="<|endoftext|>",
                             pad="<|endoftext|>", unk=None, prepend=None),
}
