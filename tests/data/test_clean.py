"""``ctlab data clean`` end to end on real text: accounting, outputs, reruns, resume after a kill, executors."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

from ctlab.cli import main
from ctlab.data.clean import (
    ExecutorOptions,
    build_phases,
    make_executors,
    plan_clean,
    run_clean,
)
from ctlab.data.demo import build_demo_input, junk_removed, kept_ids
from ctlab.data.readers import BadRecord, CorpusReader, expand_inputs
from ctlab.data.recipes import load_recipe
from ctlab.data.steps import read_output
from ctlab.errors import UserError
from ctlab.runs import RunConflict

MAPCC_STAGES = ["normalize", "url", "language", "mapcc-rules", "mapcc-repetition", "pii", "similar-lines", "dedup"]
DEMO_BAD_RECORDS = {"malformed_json": 2, "invalid_utf8": 1, "empty": 1, "binary": 1}


def read_jsonl_gz(folder: Path) -> list[dict]:
    return list(read_output(folder))


def leftover_temporary_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(".tmp.*")]


def check_accounting(out: Path, stats: dict) -> None:
    """Every document read is either in the clean output or in the rejects of exactly one stage."""
    stages = stats["stages"]
    assert stages[0]["docs_in"] == stats["input_docs"]
    assert stages[-1]["docs_out"] == stats["output_docs"]
    assert stages[-1]["chars_out"] == stats["output_chars"]
    for stage in stages:
        assert set(stage) >= {"name", "docs_in", "docs_out", "dropped"}
        assert stage["docs_in"] - stage["docs_out"] == sum(stage["dropped"].values()), stage["name"]
        rejects = read_jsonl_gz(out / "rejects" / stage["name"])
        assert len(rejects) == sum(stage["dropped"].values()), stage["name"]
        assert Counter(r["reason"] for r in rejects) == Counter(stage["dropped"]), stage["name"]
        assert {r["stage"] for r in rejects} <= {stage["name"]}
    for before, after in zip(stages, stages[1:], strict=False):
        assert before["docs_out"] == after["docs_in"], (before["name"], after["name"])
        assert before["chars_out"] == after["chars_in"], (before["name"], after["name"])
    read_rejects = read_jsonl_gz(out / "rejects" / "read")
    assert Counter(r["reason"] for r in read_rejects) == Counter(stats["bad_records"])
    clean = read_jsonl_gz(out / "clean")
    assert len(clean) == stats["output_docs"]
    assert sum(len(r["text"]) for r in clean) == stats["output_chars"]
    assert not leftover_temporary_files(out)


def input_ids(files: list[str]) -> Counter:
    """Ids of every record of ``files``, documents and bad records alike."""
    reader = CorpusReader(files, progress=False)
    ids: Counter = Counter()
    for path in files:
        for item in reader.read_file(path):
            ids[item.record_id if isinstance(item, BadRecord) else item.id] += 1
    return ids


# -- the demo input, cleaned once with mapcc ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    manifest = build_demo_input(str(root / "input"), n_articles=150, junk_per_kind=3)
    out = root / "out"
    stats = run_clean([str(root / "input")], str(out), load_recipe("mapcc"), ExecutorOptions(tasks=2), progress=False)
    return {"input": root / "input", "out": out, "stats": stats, "manifest": manifest}


def test_stats_json(demo):
    stats = demo["stats"]
    assert json.loads((demo["out"] / "stats.json").read_text(encoding="utf-8")) == stats
    assert stats["recipe"] == "mapcc"
    assert stats["input_files"] == 3
    assert stats["bad_records"] == DEMO_BAD_RECORDS
    assert [s["name"] for s in stats["stages"]] == MAPCC_STAGES
    # 150 articles + 24 junk pages + 37 People's Daily documents + 1 good line of broken.jsonl
    assert stats["input_docs"] == 150 + 8 * 3 + 150 // 4 + 1
    assert 0 < stats["output_docs"] < stats["input_docs"]
    assert 0 < stats["output_chars"] < stats["input_chars"]


def test_accounting_closes(demo):
    check_accounting(demo["out"], demo["stats"])


def test_nothing_is_lost_silently(demo):
    """Each input record is in the clean output or in one stage's rejects, exactly once."""
    files = expand_inputs([str(demo["input"])])
    out = demo["out"]
    seen = Counter(r["id"] for r in read_jsonl_gz(out / "clean"))
    for folder in (out / "rejects").iterdir():
        seen.update(r["id"] for r in read_jsonl_gz(folder))
    assert seen == input_ids(files)


def test_clean_output_records(demo):
    files = set(expand_inputs([str(demo["input"])]))
    records = read_jsonl_gz(demo["out"] / "clean")
    assert records
    for record in records:
        assert set(record) == {"text", "id", "metadata"}
        assert record["text"].strip()
        assert record["metadata"]["source"] in files
        assert "url" in record["metadata"]
    from_warc = [r for r in records if r["metadata"]["source"].endswith("web.warc.gz")]
    assert from_warc and all(r["metadata"]["url"].startswith("http") for r in from_warc)
    assert all(r["id"].startswith("<urn:ctlab:") for r in from_warc)
    daily = [r for r in records if r["metadata"]["source"].endswith("peoples_daily.jsonl.gz")]
    assert daily and all(r["id"].startswith(r["metadata"]["source"] + ":") for r in daily)


def test_demo_duplicates_are_removed(demo):
    removed = junk_removed(kept_ids(str(demo["out"])), demo["manifest"])
    assert removed["exact_duplicate"] == (3, 3)
    assert removed["near_duplicate"] == (3, 3)


def test_rerun_is_a_no_op(demo, capsys):
    out = demo["out"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    argv = ["data", "clean", str(demo["input"]), "--out", str(out), "--tasks", "2", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "similar-lines" in printed and "clean documents:" in printed
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert run_clean([str(demo["input"])], str(out), load_recipe("mapcc"), ExecutorOptions(tasks=2)) == demo["stats"]


def test_other_arguments_on_the_same_dir_conflict(demo, tmp_path, capsys):
    out = str(demo["out"])
    inputs = [str(demo["input"])]
    stats_before = (demo["out"] / "stats.json").read_bytes()
    with pytest.raises(RunConflict):
        run_clean(inputs, out, load_recipe("mapcc"), ExecutorOptions(tasks=3), progress=False)
    with pytest.raises(RunConflict):
        run_clean(inputs, out, load_recipe("fineweb2-zh"), ExecutorOptions(tasks=2), progress=False)
    with pytest.raises(RunConflict):
        run_clean([str(demo["input"] / "broken.jsonl")], out, load_recipe("mapcc"), ExecutorOptions(tasks=2))
    with pytest.raises(RunConflict):
        run_clean(inputs, out, load_recipe("mapcc"), ExecutorOptions(tasks=2), input_format="jsonl")
    assert main(["data", "clean", *inputs, "--out", out, "--tasks", "2", "--recipe", "fineweb2-zh"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("ctlab: error:")
        and "holds a clean run with other settings (recipe." in err[0]
    )
    assert (demo["out"] / "stats.json").read_bytes() == stats_before


def test_recipe_file_overrides_change_the_stages(tmp_path, inews):
    recipe_file = tmp_path / "my-recipe.yaml"
    recipe_file.write_text(
        "base: mapcc\npii: {enabled: false}\nrepetition: {enabled: true}\ndedup: {exact: false, minhash: false}\n",
        encoding="utf-8",
    )
    recipe = load_recipe(str(recipe_file))
    assert recipe.name == "my-recipe"
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"a{i}", "text": inews[i][1]}, ensure_ascii=False) + "\n" for i in range(20)),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    stats = run_clean([str(src)], str(out), recipe, ExecutorOptions(tasks=1), progress=False)
    assert stats["recipe"] == "my-recipe"
    expected = ["normalize", "url", "language", "mapcc-rules", "mapcc-repetition", "repetition", "similar-lines"]
    assert [s["name"] for s in stats["stages"]] == expected
    assert not (out / "logs" / "dedup-filter").exists()  # no cross-document dedup: no dedup phases
    check_accounting(out, stats)
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["identity"]["recipe"]["pii"]["enabled"] is False


# -- resume after a kill ---------------------------------------------------------------------------------


def _clean_command(inputs: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        *("-m", "ctlab.cli", "data", "clean", str(inputs), "--out", str(out)),
        *("--tasks", "4", "--workers", "1", "--no-progress"),
    ]


def _run_result(out: Path) -> tuple[set, dict, set]:
    clean = {(r["id"], r["text"]) for r in read_jsonl_gz(out / "clean")}
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    rejects = set()
    for folder in (out / "rejects").iterdir():
        rejects.update((r["id"], r["stage"], r["reason"], r["text"]) for r in read_jsonl_gz(folder))
    return clean, stats, rejects


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, inews):
    inputs = tmp_path / "in"
    inputs.mkdir()
    # one file per task; without URLs, as the URL stage would spend most of each task loading its blocklists
    for part in range(4):
        with open(inputs / f"part{part}.jsonl", "w", encoding="utf-8") as f:
            for i in range(150 * part, 150 * (part + 1)):
                f.write(json.dumps({"id": f"inews-{i}", "text": inews[i][1]}, ensure_ascii=False) + "\n")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = {name: tmp_path / f"{name}.log" for name in ("killed", "whole", "resumed")}
    victim = uninterrupted = None
    try:
        # the uninterrupted run goes on meanwhile (one process each, two cores)
        with open(log_path["whole"], "wb") as log:
            uninterrupted = subprocess.Popen(_clean_command(inputs, whole), stdout=log, stderr=log, env=env)
        with open(log_path["killed"], "wb") as log:
            # its own process group, so the kill also takes the helper processes it forks
            victim = subprocess.Popen(
                _clean_command(inputs, killed), stdout=log, stderr=log, env=env, start_new_session=True
            )
        completions = killed / "logs" / "filter" / "completions"
        deadline = time.monotonic() + 120
        while victim.poll() is None and time.monotonic() < deadline:
            if completions.is_dir() and any(completions.iterdir()):
                break
            time.sleep(0.02)
        killed_mid_run = victim.poll() is None
        if killed_mid_run:
            os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        done_before = {}  # task stats of the tasks that completed before the kill: a resume must not redo them
        if killed_mid_run:
            assert victim.returncode == -signal.SIGKILL
            assert not (killed / "stats.json").exists()
            assert 1 <= len(list(completions.iterdir())) < 4
            done_before = {
                p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (killed / "logs" / "filter" / "stats").iterdir()
            }
            assert len(done_before) == len(list(completions.iterdir()))
        else:
            warnings.warn("the run finished before it could be killed: resume not exercised", stacklevel=1)
        with open(log_path["resumed"], "wb") as log:
            resumed = subprocess.run(_clean_command(inputs, killed), stdout=log, stderr=log, env=env, timeout=180)
        assert resumed.returncode == 0, log_path["resumed"].read_text(errors="replace")
        assert uninterrupted.wait(timeout=180) == 0, log_path["whole"].read_text(errors="replace")
    finally:
        for process in (victim, uninterrupted):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    for name, (mtime, content) in done_before.items():
        path = killed / "logs" / "filter" / "stats" / name
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, content), f"task {name} was run again"
    resumed_clean, resumed_stats, resumed_rejects = _run_result(killed)
    whole_clean, whole_stats, whole_rejects = _run_result(whole)
    assert resumed_stats["input_docs"] == 600
    assert len(resumed_clean) == resumed_stats["output_docs"] > 0
    assert resumed_clean == whole_clean
    assert resumed_stats == whole_stats  # stats.json has no timings: equal as a whole
    assert resumed_rejects == whole_rejects
    assert not leftover_temporary_files(killed / "clean") and not leftover_temporary_files(killed / "rejects")
    check_accounting(killed, resumed_stats)


# -- other executors --------------------------------------------------------------------------------------


def _tiny_input(tmp_path: Path, inews) -> list[str]:
    src = tmp_path / "tiny.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"t{i}", "text": inews[i][1]}, ensure_ascii=False) + "\n" for i in range(6)),
        encoding="utf-8",
    )
    return [str(src)]


def test_ray_executor(tmp_path, inews):
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "out"
        result = run_clean(
            _tiny_input(tmp_path, inews),
            str(out),
            load_recipe("mapcc"),
            ExecutorOptions(kind="ray", tasks=2, workers=2),
            progress=False,
        )
        assert result is None  # cluster executors report through stats.json
        stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
        assert stats["input_docs"] == 6
        assert [s["name"] for s in stats["stages"]] == MAPCC_STAGES
        check_accounting(out, stats)
    finally:
        ray.shutdown()


def test_ray_executor_without_ray_is_a_clear_error(tmp_path, inews):
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed")
    phases = build_phases(load_recipe("mapcc"), _tiny_input(tmp_path, inews), str(tmp_path / "out"), 2, None, False)
    with pytest.raises(UserError, match="needs ray"):
        make_executors(phases, str(tmp_path / "out"), ExecutorOptions(kind="ray"))


@pytest.fixture
def no_subprocesses(monkeypatch):
    """Fails the test if anything tries to start a process (sbatch, scontrol, ...)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"unexpected subprocess: {args}")

    for name in ("run", "check_output", "check_call", "call", "Popen"):
        monkeypatch.setattr(subprocess, name, refuse)
    return calls


def test_slurm_executors_are_chained_without_submitting(tmp_path, inews, no_subprocesses):
    from datatrove.executor.slurm import SlurmPipelineExecutor

    out = str(tmp_path / "out")
    phases = build_phases(load_recipe("mapcc"), _tiny_input(tmp_path, inews), out, 2, None, False)
    executors = make_executors(phases, out, ExecutorOptions(kind="slurm", slurm_partition="p", slurm_time="1:00:00"))
    assert len(executors) == len(phases) == 5
    assert all(isinstance(e, SlurmPipelineExecutor) for e in executors)
    assert executors[0].depends is None
    for previous, executor in zip(executors, executors[1:], strict=False):
        assert executor.depends is previous
    for (name, _, tasks), executor in zip(phases, executors, strict=True):
        assert executor.partition == "p" and executor.time == "1:00:00"
        assert executor.tasks == tasks
        assert executor.job_name == f"ctlab-clean-{name}"
        assert executor.logging_dir.path == f"{out}/logs/{name}"
        assert executor.job_id is None  # nothing submitted
    assert no_subprocesses == []
    with pytest.raises(UserError, match="slurm-partition"):
        make_executors(phases, out, ExecutorOptions(kind="slurm"))
    with pytest.raises(UserError, match="unknown executor"):
        make_executors(phases, out, ExecutorOptions(kind="kubernetes"))


def test_slurm_run_submits_every_phase_after_the_previous(tmp_path, inews, monkeypatch):
    import datatrove.executor.slurm as slurm

    submitted = []  # (script, sbatch arguments, job id)

    def fake_sbatch(contents, job_id_retriever, *args):
        job_id = str(100 + len(submitted))
        submitted.append((contents, args, job_id))
        return job_id

    monkeypatch.setattr(slurm, "launch_slurm_job", fake_sbatch)
    out = tmp_path / "out"
    options = ExecutorOptions(kind="slurm", tasks=2, slurm_partition="p")
    assert run_clean(_tiny_input(tmp_path, inews), str(out), load_recipe("mapcc"), options, progress=False) is None
    jobs = [job for job in submitted if "launch_pickled_pipeline" in job[0]]  # the others merge a phase's stats
    names = ["filter", "dedup-buckets", "dedup-cluster", "dedup-filter", "stats"]
    assert [next(n for n in names if f"--job-name=ctlab-clean-{n}\n" in c) for c, _, _ in jobs] == names
    assert all("--partition=p\n" in c for c, _, _ in jobs)
    previous_id = None
    for _, args, job_id in jobs:
        dependency = [a for a in args if a.startswith("--dependency=")]
        assert dependency == ([] if previous_id is None else [f"--dependency=afterok:{previous_id}"])
        previous_id = job_id
    # nothing ran here
    assert not (out / "stats.json").exists()
    assert not (out / "clean").exists()


def test_bad_options(tmp_path, inews):
    inputs = _tiny_input(tmp_path, inews)
    with pytest.raises(UserError, match="at least 1"):
        run_clean(inputs, str(tmp_path / "a"), load_recipe("mapcc"), ExecutorOptions(tasks=0))
    with pytest.raises(UserError, match="input not found"):
        run_clean([str(tmp_path / "missing")], str(tmp_path / "b"), load_recipe("mapcc"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no input files"):
        run_clean([str(tmp_path / "empty")], str(tmp_path / "c"), load_recipe("mapcc"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match="a-file is a file, not a folder"):
        run_clean(inputs, str(tmp_path / "a-file"), load_recipe("mapcc"))


def test_inputs_in_another_order_are_another_run(tmp_path, inews):
    """Tasks read files[rank::tasks], so the order is part of the run."""
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    for path, (_, text) in ((first, inews[0]), (second, inews[1])):
        path.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = str(tmp_path / "out")
    run_clean([str(first), str(second)], out, load_recipe("mapcc"), ExecutorOptions(tasks=2), progress=False)
    with pytest.raises(RunConflict, match="inputs"):
        plan_clean([str(second), str(first)], out, load_recipe("mapcc"), ExecutorOptions(tasks=2))
    plan_clean([str(first), str(second), str(first)], out, load_recipe("mapcc"), ExecutorOptions(tasks=2))
    renamed = tmp_path / "my-mapcc.yaml"  # the same thresholds under another name: the same run
    renamed.write_text("base: mapcc\ndescription: mine\n")
    plan_clean([str(first), str(second)], out, load_recipe(str(renamed)), ExecutorOptions(tasks=2))


def test_a_run_that_never_started_can_be_corrected(tmp_path, inews):
    """A claimed folder holding nothing but its run.json (a start that failed) takes the corrected command."""
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"text": inews[0][1]}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = str(tmp_path / "out")
    plan_clean([str(source)], out, load_recipe("mapcc"), ExecutorOptions(tasks=2))
    assert [p.name for p in Path(out).iterdir()] == ["run.json"]
    plan_clean([str(source)], out, load_recipe("fineweb2-zh"), ExecutorOptions(tasks=1))
    saved = json.loads((Path(out) / "run.json").read_text())
    assert saved["recipe"]["name"] == "fineweb2-zh" and saved["identity"]["tasks"] == 1


def test_a_folder_that_is_not_a_clean_run_is_left_alone(tmp_path, inews, capsys):
    out = tmp_path / "mine"
    (out / "clean").mkdir(parents=True)
    (out / "clean" / "00000.jsonl.gz").write_bytes(b"my data")
    (out / "stats.json").write_text("my stats")
    inputs = _tiny_input(tmp_path, inews)
    assert main(["data", "clean", *inputs, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty and not a ctlab clean folder" in err
    assert (out / "clean" / "00000.jsonl.gz").read_bytes() == b"my data" and (
        out / "stats.json"
    ).read_text() == "my stats"
    assert sorted(p.name for p in out.iterdir()) == ["clean", "stats.json"]


@pytest.mark.parametrize(
    ("name", "content", "fmt", "bad"),
    [
        ("empty.jsonl", b"", None, "none"),
        ("junk.bin", bytes(range(256)) * 8, None, "unknown_format 1"),
        ("news.jsonl", None, "warc", "empty 1, truncated_warc 1"),
    ],
    ids=["empty file", "binary junk", "jsonl read as warc"],
)
def test_input_with_no_documents_is_an_error(tmp_path, inews, capfd, name, content, fmt, bad):
    path = tmp_path / name
    if content is None:
        content = "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for _, text in inews[:20]).encode()
    path.write_bytes(content)
    argv = ["data", "clean", str(path), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--format", fmt] if fmt else argv) == 2
    out, err = capfd.readouterr()
    assert "0 documents read" in out  # the stages' table still says what happened
    # one line: no library dumps the input's lines to stderr on the way
    says = f"no documents could be read from the input (bad records: {bad}); check the files and --format"
    kept = f" (the bad records are in {tmp_path / 'out' / 'rejects' / 'read'})" if bad != "none" else ""
    assert err == f"ctlab: error: {says}{kept}\n"
