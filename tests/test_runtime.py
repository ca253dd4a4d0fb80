"""``import minivit`` leaves the process as it was; ``minivit.runtime.tune()`` and the
``minivit`` command apply the allocator and OpenBLAS settings."""
import os
import subprocess
import sys

import pytest

from minivit import runtime


def _run(code: str, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_import_minivit_changes_neither_the_environment_nor_the_allocator():
    code = ("import ctypes, os\n"
            "calls = []\n"
            "real = ctypes.CDLL\n"
            "class Spy(real):\n"
            "    def __getattr__(self, name):\n"
            "        calls.append(name)\n"
            "        return real.__getattr__(self, name)\n"
            "ctypes.CDLL = Spy\n"
            "import minivit, minivit.nn, minivit.models\n"
            "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'mallopt' in calls)\n")
    out = _run(code)
    assert out.stdout.split() == ["None", "False"], out.stderr


def test_tune_in_a_script_reports_whether_the_openblas_variable_took():
    # minivit's package __init__ loads NumPy, so a script calling tune() gets the allocator
    # settings but the BLAS variable only if it was set before Python started (the command
    # re-executes itself for that)
    out = _run("import minivit.runtime as r, os; t = r.tune(); "
               "print(t['openblas_thread_timeout'], os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    assert out.stdout.split() == ["False", "None"], out.stderr
    out = _run("import minivit.runtime as r, os; print(r.tune()['openblas_thread_timeout'])",
               OPENBLAS_THREAD_TIMEOUT="20")
    assert out.stdout.split() == ["True"], out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_tune_malloc_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("MINIVIT_MALLOC_TUNING", "0")
    assert runtime.tune_malloc() is False


def test_the_command_restarts_itself_once_with_the_openblas_variable(monkeypatch):
    calls = []
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    monkeypatch.delenv("MINIVIT_NO_REEXEC", raising=False)
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append(argv))
    monkeypatch.setattr(sys, "argv", ["minivit", "models"])
    runtime.reexec_with_blas_env()
    assert calls == [[sys.executable, "-m", "minivit", "models"]]
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == runtime.OPENBLAS_TIMEOUT
    runtime.reexec_with_blas_env()            # now set: no second restart
    assert len(calls) == 1


def test_the_command_sees_the_variable_end_to_end():
    code = ("import sys, os\n"
            "sys.argv = ['minivit', 'models']\n"
            "from minivit.cli import main\n"
            "main()\n")
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert "vit_cifar" in out.stdout
