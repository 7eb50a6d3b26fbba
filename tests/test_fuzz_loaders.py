"""Fuzzing the loaders (issue 16): mutated .pth, .npz and .safetensors files either load or raise a
clear error (a ValueError), within a memory bound and a time limit.

The loads run in a worker subprocess whose address space is capped with `resource.setrlimit(
RLIMIT_AS)` at what it uses after importing npmobilenet plus MEMORY_BUDGET: a file that makes a
loader allocate beyond what it holds shows up as a MemoryError (or a dead worker), a hang as a
timeout. Mutations are raw (bytes overwritten, the file cut or grown) and structure-aware (inside
a zip member, re-zipped with a valid CRC so the reader gets past the checksum: the pickle, the
.npy headers, the stored config; inside the safetensors JSON header). Hypothesis draws them; the
number of examples per format is NPMOBILENET_FUZZ_EXAMPLES (default 40: about 10 s in all).
"""
import io
import json
import os
import select
import subprocess
import sys
import zipfile

import numpy as np
import pytest

resource = pytest.importorskip("resource")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
EXAMPLES = int(os.environ.get("NPMOBILENET_FUZZ_EXAMPLES", 40))
MEMORY_BUDGET = 512 * 2 ** 20
TIMEOUT = 30.0

WORKER = r"""
import json, os, resource, sys, traceback, warnings
warnings.simplefilter("ignore")
import npmobilenet
from npmobilenet.io.torch_zip import load_torch_file
from npmobilenet.io.weights import from_weights

LOADERS = {"pth": load_torch_file, "safetensors": from_weights, "npz": npmobilenet.load}
with open("/proc/self/status") as f:
    vm_kib = int(next(line for line in f if line.startswith("VmSize:")).split()[1])
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + int(sys.argv[1]), hard))
print("ready", flush=True)
for line in sys.stdin:
    kind, path = json.loads(line)
    try:
        LOADERS[kind](path)
        result = {"outcome": "load"}
    except ValueError as exc:
        result = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)[:300]}
    except BaseException as exc:
        result = {"outcome": "unexpected", "type": type(exc).__name__,
                  "message": "".join(traceback.format_exception(exc))[-1500:]}
    print(json.dumps(result), flush=True)
"""


class Worker:
    """One subprocess that loads files on request, under the address-space cap; restarted if it dies."""

    def __init__(self):
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(MEMORY_BUDGET)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self._readline(120) == "ready"

    def _readline(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise AssertionError(f"the load took over {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            raise AssertionError(f"the loader process died (status {code}): memory or a crash")
        return line.strip()

    def load(self, kind, path):
        if self.proc is None:
            self._start()
        self.proc.stdin.write(json.dumps([kind, str(path)]) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._readline(TIMEOUT))

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    import npmobilenet

    directory = tmp_path_factory.mktemp("seeds")
    model = npmobilenet.build("mobilenet_v3_small", 0.1, num_classes=4)
    npmobilenet.save(model, directory / "seed.npz", epoch=1, resolution=32, mean=[0.5] * 3, std=[0.25] * 3)
    read = lambda path: open(path, "rb").read()   # noqa: E731
    return {
        "pth": [read(os.path.join(FIXTURES, "torch_roundtrip.pth")), read(os.path.join(FIXTURES, "torch_roundtrip_legacy.pth"))],
        "safetensors": [read(os.path.join(FIXTURES, "timm_mobilenetv1_w010.safetensors"))],
        "npz": [read(directory / "seed.npz")],
    }


# -- mutations --------------------------------------------------------------------------------------------
def _overwrite(draw, data, start=0, end=None, max_changes=8):
    data = bytearray(data)
    end = len(data) if end is None else min(end, len(data))
    if end <= start:
        return bytes(data)
    for _ in range(draw(st.integers(1, max_changes))):
        position = draw(st.integers(start, end - 1))
        data[position] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
    return bytes(data)


def _rezip(draw, data):
    """Mutate one member of a zip (its first bytes or anywhere) and write the zip again, CRCs valid."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    index = draw(st.integers(0, len(members) - 1))
    info, content = members[index]
    if content:
        head_only = draw(st.booleans())
        content = _overwrite(draw, content, 0, 160 if head_only else None)
        if draw(st.booleans()) and len(content) > 1:
            content = content[: draw(st.integers(0, len(content) - 1))]
    members[index] = (info, content)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, content in members:
            archive.writestr(info, content)
    return buffer.getvalue()


def _npz_config(draw, data):
    """Replace one value of the stored config with something large, odd or of the wrong type."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    for i, (info, content) in enumerate(members):
        if info.filename == "__config__.npy":
            array = np.load(io.BytesIO(content))
            config = json.loads(array.tobytes())
            key = draw(st.sampled_from(["width", "num_classes", "arch", "expanded_channels", "repeats", "factorized"]))
            config[key] = draw(st.sampled_from([0, -1, 10 ** 9, 2 ** 64, 1e308, 0.001, "x", None, [], [10 ** 6] * 11,
                                                {"head": 10 ** 6}, {"blocks.0.conv_pwl": 3}]))
            out = io.BytesIO()
            np.save(out, np.frombuffer(json.dumps(config).encode(), np.uint8))
            members[i] = (info, out.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, content in members:
            archive.writestr(info, content)
    return buffer.getvalue()


def _safetensors_header(draw, data):
    header_len = int.from_bytes(data[:8], "little")
    mutated = _overwrite(draw, data, 8, 8 + header_len, max_changes=4)
    if draw(st.booleans()):   # or lie about the header's length
        mutated = draw(st.sampled_from([0, 1, header_len - 1, header_len + 1, 2 ** 40, len(data)])).to_bytes(8, "little") \
            + mutated[8:]
    return mutated


@st.composite
def mutants(draw, seeds, kind):
    data = draw(st.sampled_from(seeds))
    how = draw(st.sampled_from(["bytes", "cut", "grow", "inside", "inside"] + (["config"] if kind == "npz" else [])))
    if how == "bytes":
        return _overwrite(draw, data)
    if how == "cut":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "grow":
        position = draw(st.integers(0, len(data)))
        return data[:position] + draw(st.binary(min_size=1, max_size=64)) + data[position:]
    if how == "config":
        return _npz_config(draw, data)
    if kind == "safetensors":
        return _safetensors_header(draw, data)
    if data[:2] == b"PK":
        return _rezip(draw, data)
    return _overwrite(draw, data, 0, 400)   # the legacy format's pickles come first


@pytest.mark.parametrize("kind", ["pth", "npz", "safetensors"])
def test_mutated_files_load_or_give_a_clear_error(kind, seeds, worker, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"fuzz-{kind}")
    outcomes = {"load": 0, "error": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=mutants(seeds[kind], kind))
    def check(data):
        path = directory / f"mutant.{kind}"
        path.write_bytes(data)
        result = worker.load(kind, path)
        assert result["outcome"] in ("load", "error"), f"{result['type']}: {result['message']}"
        outcomes[result["outcome"]] += 1

    check()
    assert outcomes["error"] > 0   # the mutations do reach the checks
