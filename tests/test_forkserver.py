"""tests/forkserver.py behaves as `python -m r1v3.cli` would for a script: exit codes, stdout and stderr, the
caller's working directory and environment."""

import os
import subprocess


def run(forked_r1v3, *args, cwd=None, **env):
    return subprocess.run([*forked_r1v3["R1V3"].split(), *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, **forked_r1v3, **env))


def test_a_forked_command_is_an_ordinary_command(forked_r1v3, tmp_path):
    ok = run(forked_r1v3, "--version")
    assert ok.returncode == 0 and ok.stdout.startswith("r1v3 ") and not ok.stderr
    bad = run(forked_r1v3, "eval", "mmmu", "--bogus")
    assert bad.returncode == 2 and "No such option: --bogus" in bad.stderr and not bad.stdout
    # the store comes from the caller's environment, a relative path from the caller's directory
    made = run(forked_r1v3, "data", "synth", "--name", "p", "--problems", "10", cwd=tmp_path, R1V3_STORE="here")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "here" / "p" / "v1" / "manifest.json").is_file()
    missing = run(forked_r1v3, "eval", "mmmu", "--model", "nope", "--data", "p", cwd=tmp_path, R1V3_STORE="here")
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and len(missing.stderr.splitlines()) == 1


def test_a_lost_client_does_not_stop_the_server(forked_r1v3):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # connects, says nothing, leaves
        s.connect(forked_r1v3["R1V3_FORKSERVER"])
    assert run(forked_r1v3, "--version").returncode == 0
