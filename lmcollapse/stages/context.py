"""What every stage is handed: the config, the run directory, the accelerator and the options.

    context = Context(config, RunDir(Path("runs/tiny")), make_accelerator(config))
    tokenizer = context.tokenizer()   # the run's own tokenizer (base/model), loaded once
    family = context.family_of(3)     # generation 3's model family: its config, base/ and human/, tokenizer
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from lmcollapse.config import PipelineConfig
from lmcollapse.data.corpus import CorpusPlan
from lmcollapse.engine.modeling import load_model, load_tokenizer
from lmcollapse.engine.vector_math import start_vector_math
from lmcollapse.errors import LmcollapseError
from lmcollapse.run.layout import RunDir

log = logging.getLogger("lmcollapse.stages.pipeline")


@dataclass
class Family:
    """One model family of the run (an entry of ``model.chain``; the run's only one without a chain):
    the one-family config its base, human blocks and generations are built with, the folder holding
    its ``base/`` and ``human/`` (the run's own for the first), and its tokenizer, loaded once."""

    position: int  # index in model.entries: 0 is the run's own base/ and human/
    config: PipelineConfig
    run: RunDir
    _tokenizer: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.model.name

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.run.base_model, self.config.model.trust_remote_code)
        return self._tokenizer


@dataclass
class Context:
    """Everything a stage needs: the config, the run directory, the accelerator, the options."""

    config: PipelineConfig
    run: RunDir
    accelerator: object
    accept_changed: bool = False
    progress: bool = True
    echo: object = print
    corpus: CorpusPlan | None = None  # where the text comes from, located once per command (default: from config)
    _families: dict = field(default_factory=dict, repr=False)
    run_config: PipelineConfig | None = None  # in_family's: the whole run's config (cards name the run by it)

    def __post_init__(self) -> None:
        if self.corpus is None:
            self.corpus = CorpusPlan(self.config)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, text: str) -> None:
        """A progress line (stderr, silenced by -q); results go to ``echo``."""
        if self.main:
            log.info(text)

    def tokenizer(self):
        """The tokenizer saved with the run's base model (chain[0]'s with a chain), which every stage
        after the base uses; a chain's other families: ``family_of(k).tokenizer()``."""
        return self.family(0).tokenizer()

    def family(self, position: int) -> Family:
        """Model family ``position`` (an index of ``model.entries``)."""
        if position not in self._families:
            entry = self.config.model.entries[position]
            self._families[position] = Family(position, self.config.for_family(entry), self.run.family(position))
        return self._families[position]

    def family_of(self, generation: int) -> Family:
        """The model family generation ``generation`` is trained in."""
        return self.family(self.config.model.family_position(generation))

    def families(self) -> list[Family]:
        return [self.family(position) for position in range(len(self.config.model.entries))]

    def in_family(self, family: Family) -> Context:
        """This context for one family's own base and human stages: its config, its folder."""
        return Context(family.config, family.run, self.accelerator, self.accept_changed, self.progress, self.echo,
                       corpus=self.corpus, run_config=self.config)

    def load_weights(self, folder):
        """One of the run's own saved models (fp32, the config's attention kernel), without its tokenizer."""
        model, _ = load_model(folder, self.config.model.attn_implementation, with_tokenizer=False,
                              trust_remote_code=self.config.model.trust_remote_code)
        return model

    def forget_tokenizer(self) -> None:
        """After the base stage writes the run's tokenizer: the next ``tokenizer()`` reads that copy."""
        self._families.clear()


def make_accelerator(config: PipelineConfig):
    """An ``Accelerator`` for the configured precision on whatever devices exist."""
    start_vector_math()  # before any stage computes: engine/vector_math.py says why
    if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise LmcollapseError("train.mixed_precision=fp16 needs a GPU: use bf16 or no on a CPU")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # One process: forget any accelerator an earlier build in this process configured.
        AcceleratorState._reset_state(reset_partial_state=True)
    # Without a GPU, say so: accelerate then runs several processes (accelerate launch --multi_gpu,
    # torchrun) on the CPU with gloo, instead of falling back to a single process.
    xpu = getattr(torch, "xpu", None)
    cpu_only = not (torch.cuda.is_available() or (xpu is not None and xpu.is_available())
                    or torch.backends.mps.is_available())
    # The scheduler is stepped once per optimizer step by the training loop itself;
    # accelerate's default would step it once per process.
    return Accelerator(mixed_precision=config.train.mixed_precision, step_scheduler_with_optimizer=False,
                       cpu=cpu_only)


@contextlib.contextmanager
def gpu_memory_peak(record: dict, key: str):
    """Record the CUDA memory the block allocated at its peak (GB, what PyTorch allocated, not its
    cache) under ``record[key]``, and the most the caching allocator held (allocations plus its
    cache, what nvidia-smi shows) under the same key with ``reserved`` for ``peak``; nothing without
    a CUDA device, so CPU manifests do not change."""
    if not torch.cuda.is_available():
        yield
        return
    torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        record[key] = torch.cuda.max_memory_allocated() / 1e9
        record[key.replace("_peak_", "_reserved_")] = torch.cuda.max_memory_reserved() / 1e9
