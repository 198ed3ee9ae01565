"""Architecture presets: model shapes built from config with fresh weights (then pretrained, see pretrain.py).

Kept free of heavy imports so that config validation can name the presets without loading torch.
Values are `transformers.OPTConfig` arguments; the vocabulary size comes from the BPE tokenizer
trained on the human corpus (``model.vocab_size``).
"""

from __future__ import annotations

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
    "tiny-opt": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "ffn_dim": 512,
        "max_position_embeddings": 256,
        "dropout": 0.1,
        "vocab_size": 4096,
    },
}
