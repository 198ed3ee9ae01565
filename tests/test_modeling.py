"""Models: presets, attention kernels, and the from_pretrained round trip of what a run saves."""

from __future__ import annotations

import pytest
import torch

from lmcollapse.config import ModelConfig
from lmcollapse.engine.modeling import build_preset_model, load_model, save_model, train_bpe_tokenizer
from lmcollapse.errors import LmcollapseError

LINES = [" = Valkyria Chronicles = \n", " The game began development in 2010 .\n", " It was released in Japan .\n"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(LINES, vocab_size=300, max_length=64)


def tiny(attn: str) -> ModelConfig:
    return ModelConfig(name="tiny-opt", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64,
                       max_positions=64, attn_implementation=attn)


def test_sdpa_and_eager_attention_compute_the_same_model(tokenizer):
    ids = torch.tensor([tokenizer(LINES[1])["input_ids"] * 2])
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding, as in batched generation
    outputs = {}
    for attn in ("sdpa", "eager"):
        model = build_preset_model(tiny(attn), tokenizer, seed=0).eval()
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            outputs[attn] = model(input_ids=ids, attention_mask=mask).logits[0, 3:]
    assert torch.allclose(outputs["sdpa"], outputs["eager"], atol=1e-5)


def test_presets_are_seeded_and_sized_to_the_tokenizer(tokenizer):
    a, b = build_preset_model(tiny("sdpa"), tokenizer, seed=1), build_preset_model(tiny("sdpa"), tokenizer, seed=1)
    c = build_preset_model(tiny("sdpa"), tokenizer, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.vocab_size == len(tokenizer) and a.config.num_hidden_layers == 2


def test_saved_models_load_with_from_pretrained_in_fp32(tokenizer, tmp_path):
    model = build_preset_model(tiny("sdpa"), tokenizer, seed=0)
    save_model(model.to(torch.float16).to(torch.float32), tokenizer, tmp_path / "model")
    loaded, loaded_tokenizer = load_model(tmp_path / "model")
    assert next(loaded.parameters()).dtype == torch.float32
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters()))
    assert loaded_tokenizer(LINES[0])["input_ids"] == tokenizer(LINES[0])["input_ids"]
    assert loaded_tokenizer.padding_side == "left" and loaded_tokenizer.pad_token_id == 1


def test_unloadable_model_paths_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LmcollapseError, match="is a file: name the folder"):
        load_model(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmcollapseError, match="has no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(LmcollapseError, match=r"model no-such-org/no-such-model could not be loaded \("):
        load_model("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 in tests


def test_the_opt_125m_preset_has_the_shape_of_facebook_opt_125m():
    class OptSizedTokenizer:  # facebook/opt-125m's vocabulary size and special ids; no hub needed
        pad_token_id, bos_token_id, eos_token_id = 1, 2, 2

        def __len__(self):
            return 50272

    model = build_preset_model(ModelConfig(name="opt-125m"), OptSizedTokenizer(), seed=0)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.ffn_dim,
            config.max_position_embeddings) == (768, 12, 12, 3072, 2048)
    # facebook/opt-125m's own parameter count (tied input and output embeddings).
    assert sum(p.numel() for p in model.parameters()) == 125_239_296
