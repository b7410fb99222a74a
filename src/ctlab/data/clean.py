"""``ctlab data clean``: run a recipe over raw web data as datatrove pipelines.

A run is a chain of datatrove executors over one output directory::

    DIR/run.json          the resolved recipe and inputs (a rerun must match them)
    DIR/clean/            clean documents, JSONL.gz: text, id, metadata (source, url, ...)
    DIR/rejects/<stage>/  every dropped document with its stage and reason
    DIR/stats.json        written last: input/output docs, bad records, per-stage retention
    DIR/work/             intermediate shards and dedup state
    DIR/logs/<phase>/     datatrove logs, per-task stats and completion markers

Phases: ``filter`` (N tasks: read → rule stages → signatures), ``dedup-buckets`` (one
task per band), ``dedup-cluster`` (1 task), ``dedup-filter`` (N tasks) and ``stats``
(1 task). The same executors run locally, on Slurm or on Ray. A killed run started
again with the same arguments skips the tasks that completed and redoes the others;
outputs are written under temporary names and renamed when complete, so the result
equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets
from datatrove.utils.logging import logger

from ctlab.data.dedup import DedupCluster, DedupFilter, DedupSignature, SimilarLineDedup
from ctlab.data.filters.language import ChineseLanguageFilter
from ctlab.data.filters.mapcc import MapCCRepetition, MapCCRules
from ctlab.data.filters.quality import QualityFilter
from ctlab.data.filters.repetition import RepetitionFilter
from ctlab.data.filters.url import UrlBlocklistFilter
from ctlab.data.normalize import MaskPII, Normalize
from ctlab.data.readers import CorpusReader, expand_inputs
from ctlab.data.recipes import Recipe
from ctlab.data.steps import AtomicJsonlWriter, CleanWriter, RejectsWriter
from ctlab.errors import UserError
from ctlab.report.tables import text_table
from ctlab.runs import RUN_FILE, claim, read_json, write_json

EXECUTORS = ("local", "slurm", "ray")


@dataclass
class ExecutorOptions:
    kind: str = "local"
    tasks: int = 1
    workers: int = 1
    verbose: bool = False
    slurm_partition: str | None = None
    slurm_time: str = "24:00:00"


def rule_stages(recipe: Recipe, rejects: str | None) -> list[PipelineStep]:
    """The per-document stages of ``recipe`` that are switched on, in pipeline order."""
    candidates = [
        (recipe.normalize, Normalize),
        (recipe.url, UrlBlocklistFilter),
        (recipe.language, ChineseLanguageFilter),
        (recipe.mapcc_rules, MapCCRules),
        (recipe.mapcc_repetition, MapCCRepetition),
        (recipe.repetition, RepetitionFilter),
        (recipe.quality, QualityFilter),
        (recipe.pii, MaskPII),
    ]
    stages = [cls(config, rejects) for config, cls in candidates if config.enabled]
    if recipe.dedup.similar_lines:
        stages.append(SimilarLineDedup(recipe.dedup, rejects))
    return stages


def build_phases(recipe: Recipe, files: list[str], out: str, tasks: int, input_format: str | None, progress: bool):
    """[(phase name, pipeline, number of tasks)] of a run."""
    rejects = f"{out}/rejects"
    work = f"{out}/work"
    reader = CorpusReader(files, input_format, rejects=RejectsWriter(rejects, "read"), progress=progress)
    filtering: list[PipelineStep] = [reader, *rule_stages(recipe, rejects)]
    dedup = recipe.dedup
    if not dedup.across_documents:
        return [("filter", [*filtering, CleanWriter(f"{out}/clean")], tasks), ("stats", [RunStats(out)], 1)]
    # the intermediate shards are read back once: not worth compressing
    filtering += [AtomicJsonlWriter(f"{work}/filtered", gzip_level=None), DedupSignature(work, dedup)]
    phases = [("filter", filtering, tasks)]
    if dedup.minhash:
        buckets = MinhashDedupBuckets(f"{work}/minhash", f"{work}/dups", config=dedup.minhash_config())
        phases.append(("dedup-buckets", [buckets], dedup.bands))
    phases += [
        ("dedup-cluster", [DedupCluster(work, dedup)], 1),
        ("dedup-filter", [DedupFilter(f"{work}/filtered", work, rejects), CleanWriter(f"{out}/clean")], tasks),
        ("stats", [RunStats(out)], 1),
    ]
    return phases


class _LocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor; task logs go to the log files only, unless verbose.

    datatrove uses ``local_rank`` solely to choose the console log level (INFO for 0, ERROR
    otherwise), so quiet tasks are launched with a local rank above 0.
    """

    def __init__(self, *args, verbose: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.verbose = verbose

    def _console_warnings_only(self):
        if not self.verbose:  # datatrove resets the console log after each task
            logger.remove()
            logger.add(sys.stderr, level="WARNING")

    def run(self):
        self._console_warnings_only()
        return super().run()

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        try:
            return super()._run_for_rank(rank, local_rank if self.verbose else local_rank + 1, node_rank)
        finally:
            self._console_warnings_only()


def make_executors(phases, out: str, options: ExecutorOptions) -> list:
    """One datatrove executor per phase, each depending on the previous one."""
    executors: list = []
    for name, pipeline, tasks in phases:
        common = {"pipeline": pipeline, "tasks": tasks, "logging_dir": f"{out}/logs/{name}"}
        previous = executors[-1] if executors else None
        if options.kind == "local":
            executor = _LocalExecutor(
                **common,
                workers=min(options.workers, tasks),
                start_method="fork",
                verbose=options.verbose,
            )
        elif options.kind == "slurm":
            from datatrove.executor.slurm import SlurmPipelineExecutor

            if not options.slurm_partition:
                raise UserError("--executor slurm needs --slurm-partition")
            executor = SlurmPipelineExecutor(
                **common,
                time=options.slurm_time,
                partition=options.slurm_partition,
                job_name=f"ctlab-clean-{name}",
                depends=previous,
            )
        elif options.kind == "ray":
            try:
                import ray  # noqa: F401
                from datatrove.executor.ray import RayPipelineExecutor
            except ImportError:
                raise UserError("--executor ray needs ray: pip install 'ray[default]'") from None
            executor = RayPipelineExecutor(**common, workers=options.workers, depends=previous)
        else:
            raise UserError(f"unknown executor {options.kind!r} (choose from {', '.join(EXECUTORS)})")
        executors.append(executor)
    return executors


@dataclass
class CleanRun:
    """A run whose inputs, options and output directory have been checked; :meth:`execute` runs it."""

    out: str
    kind: str
    executors: list

    def execute(self) -> dict | None:
        """The run's stats (None when the phases were submitted to a cluster)."""
        if self.kind == "local":
            for executor in self.executors:
                executor.run()
            return json.loads((Path(self.out) / "stats.json").read_text(encoding="utf-8"))
        self.executors[-1].run()
        return None


def plan_clean(
    inputs: list[str],
    out: str,
    recipe: Recipe,
    options: ExecutorOptions | None = None,
    input_format: str | None = None,
    progress: bool = True,
) -> CleanRun:
    """Check everything a user gives before any work starts; raises :class:`UserError`."""
    options = options or ExecutorOptions()
    if options.tasks < 1 or options.workers < 1:
        raise UserError("--tasks and --workers must be at least 1")
    files = expand_inputs(inputs)
    if not files:
        raise UserError(f"no input files in {' '.join(inputs)}")
    out = os.path.abspath(out)
    thresholds = {k: v for k, v in recipe.to_dict().items() if k not in ("name", "description")}
    identity = {
        # in order (tasks read files[rank::tasks]); sizes catch most inputs changed in place
        "inputs": [[f, os.path.getsize(f)] for f in files],
        "input_format": input_format,
        "tasks": options.tasks,
        "recipe": thresholds,  # what the recipe does, whatever it is called
    }
    phases = build_phases(recipe, files, out, options.tasks, input_format, progress)
    executors = make_executors(phases, out, options)
    claim(out, "clean", identity, record={"recipe": recipe.to_dict()})  # last: a refused run leaves nothing
    return CleanRun(out, options.kind, executors)


def run_clean(
    inputs: list[str],
    out: str,
    recipe: Recipe,
    options: ExecutorOptions | None = None,
    input_format: str | None = None,
    progress: bool = True,
) -> dict | None:
    """Clean ``inputs`` into ``out`` with ``recipe``; the run's stats (None when submitted to a cluster)."""
    return plan_clean(inputs, out, recipe, options, input_format, progress).execute()


# -- statistics ---------------------------------------------------------------------------------


def _total(value) -> float:
    return value.get("total", 0) if isinstance(value, dict) else value


def _phase_step_stats(out: str, phase: str) -> dict[str, dict[str, float]]:
    """Step name → summed counters over all completed tasks of ``phase``."""
    folder = Path(out) / "logs" / phase / "stats"
    merged: dict[str, dict[str, float]] = {}
    for path in sorted(folder.glob("*.json")):
        for step in json.loads(path.read_text(encoding="utf-8")):
            name = step["name"].split(": ", 1)[-1]
            counters = merged.setdefault(name, {})
            for key, value in step["stats"].items():
                counters[key] = counters.get(key, 0) + _total(value)
    return merged


def collect_stats(out: str, recipe_name: str) -> dict:
    """The run's ``stats.json`` content, from the per-task stats of every phase."""
    filter_steps = _phase_step_stats(out, "filter")
    dedup_steps = _phase_step_stats(out, "dedup-filter")
    read = filter_steps.get("read", {})
    bad = {k.split("/", 1)[1]: int(v) for k, v in sorted(read.items()) if k.startswith("bad/")}
    stages = []
    for name, counters in [*filter_steps.items(), *dedup_steps.items()]:
        if "docs_in" not in counters and "docs_out" not in counters or name == "read":
            continue
        stages.append(
            {
                "name": name,
                "docs_in": int(counters.get("docs_in", 0)),
                "docs_out": int(counters.get("docs_out", 0)),
                "chars_in": int(counters.get("chars_in", 0)),
                "chars_out": int(counters.get("chars_out", 0)),
                "dropped": {
                    k.split("/", 1)[1]: int(v) for k, v in sorted(counters.items()) if k.startswith("dropped/")
                },
                "counts": {
                    k: int(v) for k, v in sorted(counters.items()) if k.startswith(("pii/", "lines_removed", "no_url"))
                },
            }
        )
    output_docs = stages[-1]["docs_out"] if stages else int(read.get("docs_out", 0))
    return {
        "recipe": recipe_name,
        "input_files": int(read.get("input_files", 0)),
        "input_docs": int(read.get("docs_out", 0)),
        "input_chars": int(read.get("chars_out", 0)),
        "output_docs": output_docs,
        "output_chars": stages[-1]["chars_out"] if stages else int(read.get("chars_out", 0)),
        "bad_records": bad,
        "stages": stages,
    }


class RunStats(PipelineStep):
    """Last phase of a run: writes ``DIR/stats.json`` atomically (a single task)."""

    name = "run-stats"
    type = "📊 - STATS"

    def __init__(self, out: str):
        super().__init__()
        self.out = out

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        recipe = read_json(Path(self.out) / RUN_FILE, "a ctlab clean folder")["recipe"]["name"]
        write_json(Path(self.out) / "stats.json", collect_stats(self.out, recipe))
        return iter(())


def retention_table(stats: dict) -> str:
    """The per-stage retention table the CLI prints."""
    rows = [("stage", "docs in", "docs out", "kept %", "chars out", "chars %", "top drop reasons")]
    first_chars = stats["input_chars"] or 1
    for stage in stats["stages"]:
        reasons = sorted(stage["dropped"].items(), key=lambda kv: -kv[1])[:3]
        rows.append(
            (
                stage["name"],
                f"{stage['docs_in']:,}",
                f"{stage['docs_out']:,}",
                f"{100 * stage['docs_out'] / stage['docs_in']:.1f}" if stage["docs_in"] else "-",
                f"{stage['chars_out']:,}",
                f"{100 * stage['chars_out'] / first_chars:.1f}",
                ", ".join(f"{k} {v:,}" for k, v in reasons),
            )
        )
    bad = ", ".join(f"{k} {v:,}" for k, v in stats["bad_records"].items()) or "none"
    summary = (
        f"recipe {stats['recipe']}: {stats['input_docs']:,} documents read from {stats['input_files']} files, "
        f"{stats['output_docs']:,} kept "
        f"({100 * stats['output_docs'] / max(stats['input_docs'], 1):.1f}%); bad records: {bad}"
    )
    return "\n".join([text_table(rows, left=(0, 6)), summary])
