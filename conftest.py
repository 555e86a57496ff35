"""Pytest configuration: Hypothesis profiles and the `slow` marker.

- `ci` (selected when CI=true): few examples, no deadline — keeps the suite under ~10 minutes on
  2 CPU cores.
- `dev` (the default locally): more examples.
- `thorough`: select with `HYPOTHESIS_PROFILE=thorough` for a long local run.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=8, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=25, **_common)
settings.register_profile("thorough", max_examples=200, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs sized for CPU (still run in CI)")
    config.addinivalue_line("markers", "pinned: compares a run with the pinned archive of testdata/golden.json (N9); "
                            ".ci/run runs these again under other CPU kernels")


# Tiny models: one thread is much faster than two contending ones on a 2-core machine.
import torch  # noqa: E402

torch.set_num_threads(1)

# The device of test_device.py (the oracles re-run on a chosen device; gpu_check.py sets it): STAR_TEST_DEVICE=cuda
# runs them on the GPU in float32 with TF32 off, so the float32 tolerances are the CPU ones (DESIGN.md D30).
TEST_DEVICE = os.environ.get("STAR_TEST_DEVICE", "cpu")
if TEST_DEVICE.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def device() -> torch.device:
    """The device named by STAR_TEST_DEVICE (default cpu)."""
    return torch.device(TEST_DEVICE)
