"""The pretrained bases a study needs, built once before its runs start: never by N runs racing
on the cache (the cache's lock would make N-1 of them wait, each holding a slot or a job).

    for run in bases_to_build(todo): ...      # one run per missing cache entry
    pretrain_argv(run)                         # ``lmcollapse pretrain ...`` for it
"""

from __future__ import annotations

from lmcollapse.data.corpus import CorpusPlan
from lmcollapse.stages.base_cache import locate_entry
from lmcollapse.studies.spec import StudyRun


def bases_to_build(runs: list[StudyRun]) -> list[StudyRun]:
    """One run for each pretrained base the runs need that is not cached yet (by its cache key)."""
    chosen: dict[str, StudyRun] = {}
    for run in runs:
        for entry_name in run.config.model.entries:  # with model.chain, each family's base
            config = run.config.for_family(entry_name)
            if not (config.model.is_preset and config.pretrain.enabled):
                continue
            entry = locate_entry(config, CorpusPlan(config).pretraining)
            if not entry.is_complete:
                chosen.setdefault(entry.key, run)
    # `lmcollapse pretrain` builds every base a run's pipeline needs: each such run once.
    return list({id(run): run for run in chosen.values()}.values())


def pretrain_argv(run: StudyRun) -> list[str]:
    """``lmcollapse`` arguments that pretrain (or find cached) the base ``run`` starts from."""
    return ["pretrain", "--pipeline", str(run.variant.pipeline), "--no-progress", "--set", *run.overrides()]
