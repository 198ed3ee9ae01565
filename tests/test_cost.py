"""The cost model behind `make dry-run`: memory and seconds per stage against measured runs, and the
warning (with the settings that fix it) where a pipeline will not fit the device."""

from __future__ import annotations

import pytest

from helpers import REPO
from lmcollapse.config import load_config
from lmcollapse.run.layout import RunDir
from lmcollapse.views import cost as cost
from lmcollapse.views.plan import describe_plan

H200 = cost.Device("cuda", "NVIDIA H200", int(150e9), 989e12, "specification")
TWO_CORES = cost.Device("cpu", "CPU, 2 threads", int(25e9), 230e9, "a timed matmul")


def test_memory_matches_the_live_peaks_measured_on_an_h200():
    """make gpu-check, 2026-11-26: training held 6.0 GB at its peak, the beam-search corpus 14.0 GB
    (torch.cuda.max_memory_allocated, recorded in the manifests); the memory side is not calibrated."""
    config = load_config(REPO / "pipelines" / "gpu-check.yaml")
    estimate = cost.estimate(config, cost.shape_of(config), H200, 3712, 4327 * 64, 76)
    assert estimate.train_bytes / 1e9 == pytest.approx(6.0, rel=0.25)
    assert estimate.generate_bytes / 1e9 == pytest.approx(14.0, rel=0.25)
    # bench/gpu_memory.py: one batch of 512 prompts x 5 beams under bf16 autocast held 13.2 GB
    bf16 = load_config(REPO / "pipelines" / "gpu-check.yaml", ["generate.mixed_precision=bf16", "generate.batch_size=512"])
    assert cost.estimate(bf16, cost.shape_of(bf16), H200, 3712, 0).generate_bytes / 1e9 == pytest.approx(13.2, rel=0.25)


def test_seconds_match_the_measured_cost_model_of_the_tiny_pipeline():
    """README's cost model: a tiny-pipeline generation took 9.6, 14.7 and 25.7 s at 256, 512 and
    1,024 training blocks on two cores (bench/pipeline.py; the rates were fitted on another run,
    make run's, at 1,024 blocks)."""
    config = load_config(REPO / "pipelines" / "tiny.yaml")
    shape = cost.shape_of(config)
    for blocks, measured in ((256, 9.6), (512, 14.7), (1024, 25.7)):
        seconds = cost.estimate(config, shape, TWO_CORES, blocks, 1000 * 64, 256).seconds
        assert sum(seconds.values()) == pytest.approx(measured, rel=0.2), blocks


def test_lora_and_checkpointing_lower_the_training_memory():
    config = load_config(REPO / "pipelines" / "gpu-check.yaml")
    full = cost.estimate(config, cost.shape_of(config), H200, 3712, 0).train_bytes
    lora = load_config(REPO / "pipelines" / "gpu-check.yaml", ["train.lora.r=8"])
    shape = cost.shape_of(lora)
    assert shape.trainable == 12 * 2 * 8 * 2 * 768  # q and v of 12 layers, A and B of rank 8
    assert cost.estimate(lora, shape, H200, 3712, 0).train_bytes < full
    checkpointed = load_config(REPO / "pipelines" / "gpu-check.yaml", ["train.gradient_checkpointing=true"])
    assert cost.estimate(checkpointed, cost.shape_of(checkpointed), H200, 3712, 0).train_bytes < full


def test_the_plan_warns_when_a_pipeline_will_not_fit(tmp_path, small_corpus):
    from helpers import micro_config

    config = micro_config(small_corpus)
    small = cost.Device("cpu", "a small CPU", 10_000, 230e9, "a timed matmul")
    plan = describe_plan(config, RunDir(tmp_path / "run"), 1, device=small)
    assert "cost on this device (a small CPU" in plan and "time per generation" in plan
    assert ("WARNING: training needs ~0.0 GB, more than this device's 0.0 GB: lower train.micro_batch_size, "
            "or set train.gradient_checkpointing=true or train.lora.r=8") in plan
    assert "WARNING: generation needs" in plan and "lower generate.batch_size" in plan
    roomy = describe_plan(config, RunDir(tmp_path / "run"), 1, device=TWO_CORES)
    assert "WARNING" not in roomy


def test_a_hub_model_is_not_estimated_before_it_is_downloaded(tmp_path, small_corpus):
    from helpers import micro_config

    config = micro_config(small_corpus, ["model.name=some-org/some-model", "model.vocab_size=null",
                                         "model.hidden_size=null", "model.num_layers=null", "model.num_heads=null",
                                         "model.ffn_dim=null", "model.max_positions=null"])
    assert cost.shape_of(config) is None
    plan = describe_plan(config, RunDir(tmp_path / "run"), 1, device=TWO_CORES)
    assert "some-org/some-model is on the hub: its size is known once it is downloaded (no estimate)" in plan


@pytest.mark.parametrize("preset, targets", [("tiny-gpt2", None), ("tiny-llama", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                             ("tiny-pythia", None)])
def test_the_lora_count_is_what_training_trains(preset, targets):
    """The plan's trainable count equals the adapters train_model builds on a real model."""
    pytest.importorskip("peft")
    from lmcollapse.config import LoraConfig, ModelConfig
    from lmcollapse.engine.modeling import build_preset_model, train_bpe_tokenizer
    from lmcollapse.engine.training import with_lora_adapters

    overrides = [f"model.name={preset}", "model.vocab_size=300", "train.lora.r=4"]
    if targets:
        overrides.append(f"train.lora.target_modules=[{', '.join(targets)}]")
    config = load_config(REPO / "pipelines" / "tiny.yaml", overrides)
    assert config.train.lora == LoraConfig(r=4, target_modules=targets)
    tokenizer = train_bpe_tokenizer(["a few words of text\n"] * 50, 300, 256, config.model.family)
    model = build_preset_model(ModelConfig(name=preset, vocab_size=300), tokenizer, seed=0)
    wrapped = with_lora_adapters(model, config.train, seed=0)
    assert cost.shape_of(config).trainable == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
