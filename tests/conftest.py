import os

from hypothesis import HealthCheck, settings

# One profile for CI and local runs: no deadline (the first example of a kernel includes its
# Numba compilation), few examples (each is a full conv forward and backward), derandomized so a
# red CI is reproducible.
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("NPMOBILENET_EXAMPLES", 25)),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
