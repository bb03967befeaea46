import importlib
import os

import pytest
from hypothesis import HealthCheck, settings

# The modules a reference model runs, and minisynth.backend, which hands out the code.
REFERENCE_MODULES = [
    importlib.import_module(f"minisynth.{name}")
    for name in ("layers", "attention", "model", "optim", "backend")
]

# First calls of Numba kernels compile, so no per-example deadline anywhere.
settings.register_profile("dev", deadline=None, max_examples=25)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=20,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI", "").lower() == "true" else "dev")


def pytest_sessionfinish(session, exitstatus):
    """With MINISYNTH_NO_SKIPS=1 (set by CI) a skipped test fails the run: CI must run the
    PyTorch cross-check and every other optional check, not quietly skip them."""
    if os.environ.get("MINISYNTH_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for report in skipped:
            reporter.write_line(f"MINISYNTH_NO_SKIPS: skipped {report.nodeid}: {report.longrepr}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _reference_state():
    """Every function and class in the reference modules, by identity, and the one
    process-wide fact about the fast path (whether Numba was found unusable)."""
    import minisynth.backend

    functions = {
        (module.__name__, name): obj
        for module in REFERENCE_MODULES
        for name, obj in vars(module).items()
        if callable(obj)
    }
    return functions, minisynth.backend.numba_problem()


@pytest.fixture(autouse=True)
def reference_stays_the_reference():
    """Fail any test after which a reference module holds another function than it did
    (a twin swapped in, a patch left behind) or Numba is newly marked unusable: what
    runs is chosen per model (minisynth.backend), never by changing these modules."""
    functions, problem = _reference_state()
    yield
    after, problem_after = _reference_state()
    changed = sorted(
        f"{module}.{name}"
        for key in set(functions) | set(after)
        if functions.get(key) is not after.get(key)
        for module, name in [key]
    )
    assert not changed, f"the test left reference functions rebound: {changed}"
    assert problem_after == problem, f"the test left Numba marked unusable: {problem_after}"
