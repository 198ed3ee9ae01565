"""The tests' fork server (tests/forkserver.py) runs a command as a process of its own would:
the same exit status, output and errors, a process group that dies whole, and commands whose
environment a preloaded library would have read at import run in a process of their own."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import warnings

import pytest
from forkserver import COMMAND_DEFAULTS, RUNTIME_VARIABLES, differences

from helpers import REPO, fork_server, micro_raw_config, run_cli_alone, write_pipeline


def forked(*args: str, env: dict | None = None, timeout: float = 600, cwd=REPO) -> subprocess.CompletedProcess:
    server = fork_server()
    if server is None:
        pytest.skip("LMCOLLAPSE_TEST_FORKSERVER=0: every command runs in a process of its own")
    command_env = {**os.environ, **(env or {})}
    assert not server.differences(command_env), "the fork server refuses a command in the session's environment"
    return server.run(list(args), cwd, command_env, timeout)


@pytest.mark.parametrize("args", [
    ("config", "--pipeline", "pipelines/tiny.yaml", "--set", "seed=3"),  # output on stdout
    ("generation", "1", "--pipeline", "no-such.yaml", "--run", "/tmp/unused"),  # a one-line error, exit 2
    ("status", "--run", "/nonexistent/run"),
])
def test_a_forked_command_prints_and_exits_as_the_same_command_alone(args):
    one, other = forked(*args), run_cli_alone(*args)
    assert (one.returncode, one.stdout, one.stderr) == (other.returncode, other.stdout, other.stderr)
    assert one.args == other.args


def test_environment_working_folder_and_a_failpoint_reach_the_forked_command(tmp_path, small_corpus):
    write_pipeline(tmp_path / "micro.yaml", micro_raw_config(small_corpus))
    # Relative paths, resolved in the command's working folder; killed with its process group at
    # the first training step, which the server outlives.
    killed = forked("-q", "generation", "0", "--pipeline", "micro.yaml", "--run", "run", "--no-progress",
                    env={"LMCOLLAPSE_FAILPOINT": "train-step@1=killpg"}, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "run" / "generation-00").is_dir() and not (tmp_path / "run" / "generation-00" / "model").exists()
    again = forked("config", "--pipeline", "micro.yaml", cwd=tmp_path)
    assert again.returncode == 0 and "tiny-opt" in again.stdout


def test_a_forked_command_past_its_timeout_is_killed(tmp_path, small_corpus):
    pipeline = write_pipeline(tmp_path / "micro.yaml", micro_raw_config(small_corpus))
    with pytest.raises(subprocess.TimeoutExpired):  # asleep at its first failpoint
        forked("-q", "generation", "0", "--pipeline", str(pipeline), "--run", str(tmp_path / "run"), "--no-progress",
               env={"LMCOLLAPSE_FAILPOINT": "*=sleep:60"}, timeout=3)
    assert forked("config", "--pipeline", str(pipeline)).returncode == 0


def test_a_server_that_died_says_so_once_and_every_command_still_runs(tmp_path):
    from forkserver import ForkServer

    from helpers import _SESSION_ENV

    server = ForkServer(REPO, _SESSION_ENV)
    server.server.kill()
    server.server.wait()
    with pytest.warns(UserWarning, match=r"fork server exited \(status -9\): every command from here on runs in a "
                                         r"process of its own"):
        assert server.run(["config", "--pipeline", "pipelines/tiny.yaml"], REPO, dict(os.environ), 60) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert server.run(["config", "--pipeline", "pipelines/tiny.yaml"], REPO, dict(os.environ), 60) is None
    server.close()


def test_only_variables_lmcollapse_reads_as_it_runs_may_differ_from_the_servers():
    started = {"PATH": "/bin", "OMP_NUM_THREADS": "1"}
    preloaded = {**started, "KMP_INIT_AT_FORK": "FALSE"}  # set by scikit-learn when it is imported
    assert differences(started, preloaded, dict(preloaded)) == []
    assert differences(started, preloaded, dict(started)) == []  # a fresh process's import would set it the same
    assert differences(started, preloaded, {**preloaded, "LMCOLLAPSE_FAILPOINT": "train-step@2",
                                            "PYTEST_CURRENT_TEST": "x"}) == []
    assert differences(started, preloaded, {**preloaded, "OMP_NUM_THREADS": "2"}) == ["OMP_NUM_THREADS"]  # read when torch loads
    assert differences(started, preloaded, {**preloaded, "KMP_INIT_AT_FORK": "TRUE"}) == ["KMP_INIT_AT_FORK"]
    assert differences(started, preloaded, {**preloaded, "HF_HUB_OFFLINE": "0"}) == ["HF_HUB_OFFLINE"]
    assert differences(started, preloaded, {"PATH": "/bin"}) == ["OMP_NUM_THREADS"]
    assert all(name.startswith(("LMCOLLAPSE_", "PYTEST_", "TORCHINDUCTOR_", "_TORCHINDUCTOR_", "SLURM_")) or name == "ACCEPT_CHANGED"
               for name in RUNTIME_VARIABLES)


def test_the_server_sets_what_every_command_sets_as_it_starts():
    """COMMAND_DEFAULTS are the variables main() adds to an environment that lacks them."""
    script = ("import os, sys; from lmcollapse.cli import main; before = dict(os.environ); "
              "main(['config', '--pipeline', 'pipelines/tiny.yaml']); "
              "print({k: v for k, v in os.environ.items() if k not in before}, file=sys.stderr)")
    clean = {k: v for k, v in os.environ.items() if k not in COMMAND_DEFAULTS}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=clean, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ast.literal_eval(result.stderr.strip().splitlines()[-1]) == COMMAND_DEFAULTS
