"""The textbook stays a short walk: ``tools/student_path.py`` traces one ``minivit.gelu`` call
and its backward. In reference mode no fast body runs (nothing in ``minivit/kernels``), the
forward reaches the arithmetic (``erf``) through at most 20 of minivit's functions in 6 files,
and the fast mode does run its body in ``minivit/kernels``."""
from harness import load_tool


def test_reference_mode_never_enters_the_fast_bodies_and_stays_short():
    tool = load_tool("student_path")
    forward = tool.student_path(reference=True, backward=False, shape=(8, 16))
    both = tool.student_path(reference=True, backward=True, shape=(8, 16))
    for path in (forward, both):
        assert not [f for f, _ in path if f.startswith("kernels")], path
    assert ("autograd/backend.py", "erf") in forward        # the math itself is reached
    assert ("autograd/ops/elementwise.py", "gelu_derivative") in both
    assert len(forward) <= 20 and len({f for f, _ in forward}) <= 6, forward
    assert len(both) <= 45 and len({f for f, _ in both}) <= 8, both


def test_fast_mode_runs_the_gelu_from_minivit_kernels():
    path = load_tool("student_path").student_path(reference=False, backward=True, shape=(8, 16))
    assert ("kernels/cpu_elementwise.py", "gelu_forward") in path
    assert ("kernels/cpu_elementwise.py", "gelu_backward") in path
