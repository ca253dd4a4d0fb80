"""Kill -9 at 25 fixed moments of a training run, inside every save included, then check the
run folder and that resuming finishes bit for bit like an uninterrupted run (issue 26).

Each case starts ``python -m minivit train`` on a micro ViT with ``MINIVIT_TEST_KILL_AT=
POINT:N``: the process sends itself SIGKILL the Nth time it reaches POINT (the crash points of
``minivit.runfolder.crash_point``: each stage of an atomic save, the middle of a log append,
a training step, the end of an epoch, the commit). ``tools/kill_campaign.py`` does the same at
random moments.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import kill_campaign as kc  # noqa: E402

from minivit.runfolder import check_folder  # noqa: E402

# 3 epochs of 3 steps; steps.jsonl every 2 steps; epoch 1 always writes best.npz
CASES = [
    ("config.json:written:1",), ("config.json:renamed:1",), ("step:2",),
    ("steps.jsonl:torn:1",), ("epoch-end:1",), ("metrics.jsonl:torn:1",),
    ("best.npz:written:1",), ("best.npz:synced:1",), ("best.npz:renamed:1",),
    ("last.npz:written:1",), ("last.npz:synced:1",), ("last.npz:renamed:1",), ("committed:1",),
    ("step:5",), ("metrics.jsonl:torn:2",), ("last.npz:written:2",), ("last.npz:renamed:2",),
    ("epoch-end:3",), ("metrics.jsonl:torn:3",), ("last.npz:synced:3",),
    ("last.npz:renamed:3",), ("steps.jsonl:torn:3",),
    # killed again while resuming: the reconciling rewrite of a torn log, the restart of a run
    # that had only best.npz, a step of the resumed run
    ("metrics.jsonl:torn:2", "metrics.jsonl:renamed:1"),
    ("best.npz:renamed:1", "last.npz:synced:1"),
    ("step:5", "step:2"),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("crash") / "reference"
    r = kc.train(run, resume=False)
    assert r.returncode == 0, r.stderr
    return run


def kill_resume_and_compare(tmp_path: Path, reference: Path, points: tuple[str, ...]) -> None:
    run = tmp_path / "run"
    for point in points:  # killed before config.json: the same command again, else --resume
        r = kc.train(run, resume=(run / "config.json").exists(), kill_at=point)
        assert r.returncode == -9, f"{point} was never reached (exit {r.returncode}): {r.stderr}"
        assert check_folder(run) == [], f"after a kill at {point}"
    r = kc.train(run, resume=(run / "config.json").exists())
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert kc.differences(run, reference) == []


@pytest.mark.slow
@pytest.mark.parametrize("points", CASES, ids=["+".join(c) for c in CASES])
def test_a_kill_at_any_point_loses_nothing_and_resumes_bit_exact(tmp_path, reference, points):
    kill_resume_and_compare(tmp_path, reference, points)


def test_a_kill_inside_the_save_of_last_npz_loses_nothing(tmp_path, reference):
    """The default run's sample of the slow test: killed between writing and renaming."""
    kill_resume_and_compare(tmp_path, reference, ("last.npz:synced:2",))
