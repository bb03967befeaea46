import os

from hypothesis import HealthCheck, settings

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
