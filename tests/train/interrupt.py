"""Killing a training run at the worst moment: inside a checkpoint save, after the model files are
written to the staging folder and before it is renamed."""

import os
import signal
import subprocess
import time
from pathlib import Path

_SAVE_PAUSE_HOOK = '''
"""Test hook: pause inside the checkpoint save of step $CTLAB_TEST_PAUSE_STEP, after the model
files are written to the staging folder and before it is renamed, so the test kills it there."""
import os
import time

if os.environ.get("CTLAB_TEST_PAUSE_STEP"):
    import ctlab.train.checkpoint as checkpoint

    original = checkpoint.save_pretrained
    staging = ".tmp-step-%08d" % int(os.environ["CTLAB_TEST_PAUSE_STEP"])

    def paused(model, out_dir, *rest):
        original(model, out_dir, *rest)
        if os.path.basename(str(out_dir)) == staging:
            open(os.environ["CTLAB_TEST_PAUSED"], "w").close()
            time.sleep(600)

    checkpoint.save_pretrained = paused
'''


def kill_during_save(command: list[str], tmp_path: Path, step: int) -> None:
    """Run ``command`` (a training run) and SIGKILL it inside the checkpoint save of ``step``, after
    the model files are in the staging folder and before it is renamed (the checkpoints before are complete)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(_SAVE_PAUSE_HOOK)
    paused = tmp_path / f"paused-{step}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
        "CTLAB_TEST_PAUSE_STEP": str(step),
        "CTLAB_TEST_PAUSED": str(paused),
    }
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # a safety net, not a timing assertion
        while not paused.exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"the run never reached the save of step {step}"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
