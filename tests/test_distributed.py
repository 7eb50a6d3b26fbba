"""Batch prediction on a Dask cluster (npmobilenet.distributed), on a 2-worker LocalCluster of
processes with one thread each: results equal single-process `predict_files` on the same images,
corrupt files are rows with an error, a worker killed mid-task loses and duplicates nothing, and
`resume` takes finished partitions from disk. Small: the 32x32 digits checkpoint, 40 tiny PNGs."""
import os
import signal
import sys

import numpy as np
import pytest

import npmobilenet.distributed as npd

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "compression", "digits_v2_w035.npz")


def test_import_needs_no_dask_and_calling_names_the_install(monkeypatch):
    from npmobilenet.distributed.cluster import require_dask

    monkeypatch.setitem(sys.modules, "distributed", None)   # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'npmobilenet\[dask\]'"):
        require_dask()
    with pytest.raises(ImportError, match=r"npmobilenet\[dask\]"):
        npd.predict(["x.png"], FIXTURE)


distributed = pytest.importorskip("distributed")
pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from npmobilenet.io.predict import open_predictor  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/<class>/NN.png for classes a, b, c (random 28 to 40 px images, some grayscale), and
    two broken files: not an image, and a truncated PNG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate("abc"):
        os.mkdir(root / name)
        for i in range(13):
            size = int(rng.integers(28, 41))
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c] //= 4   # a little class signal
            image = Image.fromarray(pixels) if i % 5 else Image.fromarray(pixels[..., 0])
            image.save(root / name / f"{i:02d}.png")
    (root / "b" / "05.png").write_bytes(b"not an image at all")
    whole = (root / "c" / "03.png").read_bytes()
    (root / "c" / "03.png").write_bytes(whole[: len(whole) // 2])
    return root


@pytest.fixture(scope="module")
def expected(folder):
    """Single-process rows (top 3) for every image of `folder`, in the listing's order."""
    from npmobilenet.io.predict import iter_image_paths

    predictor = open_predictor(FIXTURE)
    return predictor.predict_files(list(iter_image_paths(str(folder))), topk=3)


@pytest.fixture(scope="module")
def client(expected):   # `expected` first: the kernels are compiled (or cached) before workers start
    from distributed import Client

    from npmobilenet.distributed.cluster import start_local_cluster

    with start_local_cluster(workers=2, threads_per_worker=1) as cluster, Client(cluster) as c:
        yield c


def assert_rows_equal(frame, rows, topk=3):
    """The DataFrame holds exactly `rows` (predict_files' rows), in order, values bit for bit where
    the CPU has a register tile (its classifier sums every batch size alike; the workers' batches
    are smaller than the single process's), else to float32's last bits (OpenBLAS's tiles)."""
    from npmobilenet.ops import register_tile

    exact = register_tile.enabled()
    assert list(frame["path"]) == [row["path"] for row in rows]
    for (_, got), row in zip(frame.iterrows(), rows):
        if row["error"] is not None:
            assert got["error"] == row["error"]
            assert got["class_index"] is None or np.isnan(got["probability"])
            continue
        assert got["error"] is None or got["error"] != got["error"]   # None or NaN
        for rank, entry in enumerate(row["top"], 1):
            suffix = "" if rank == 1 else f"_{rank}"
            assert int(got["class_index" + suffix]) == entry["index"]
            if exact:
                assert float(got["probability" + suffix]) == entry["probability"]
            else:
                assert float(got["probability" + suffix]) == pytest.approx(entry["probability"], rel=1e-5)


def test_predict_equals_single_process_and_reports_corrupt_files(client, folder, expected):
    frame = npd.predict(str(folder), FIXTURE, client, topk=3, batch_size=4, partition_size=5)
    assert len(frame) == len(expected) == 39
    assert_rows_equal(frame, expected)
    broken = frame[frame["error"].notna()]
    assert sorted(os.path.relpath(p, folder) for p in broken["path"]) == ["b/05.png", "c/03.png"]
    assert all("truncated" in e or "not an image" in e for e in broken["error"])
    assert broken["class_index"].isna().all() and broken["probability"].isna().all()
    run = frame.attrs["run"]
    assert run["images"] == 39 and run["errors"] == 2 and run["partitions"] == 8 and run["workers"] == 2


def test_local_workers_get_a_node_local_numba_cache_their_threads_and_no_trim_threshold(client):
    from npmobilenet.distributed.worker import node_local_cache_dir, worker_probe

    names = ("NUMBA_CACHE_DIR", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    environments = client.run(lambda: {name: os.environ.get(name) for name in names})
    assert len(environments) == 2
    for env in environments.values():
        assert env["NUMBA_CACHE_DIR"] == node_local_cache_dir()
        assert env["NUMBA_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
        assert env["MALLOC_TRIM_THRESHOLD_"] == os.environ.get("MALLOC_TRIM_THRESHOLD_")   # Dask's 65536 not added
    for probe in client.run(worker_probe).values():
        assert probe["numba_cache_dir"] == node_local_cache_dir() and probe["numba_threads"] == 1


def test_worker_killed_mid_run_loses_and_duplicates_nothing(client, folder, expected, tmp_path):
    from distributed.diagnostics.plugin import WorkerPlugin

    marker = str(tmp_path / "killed")

    class KillOnce(WorkerPlugin):
        """SIGKILLs its worker process as it starts executing partition 3 (once: the marker)."""

        name = "kill-once"

        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and str(key).startswith("npmobilenet-partition-3-") and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

    before = set(client.run(os.getpid).values())
    client.register_plugin(KillOnce())
    try:
        out = tmp_path / "results.parquet"
        summary = npd.predict(str(folder), FIXTURE, client, out=str(out), topk=3, batch_size=2, partition_size=3)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert os.path.exists(marker), "no worker was killed"
    client.wait_for_workers(2, timeout=60)
    assert set(client.run(os.getpid).values()) != before   # the nanny restarted the killed worker
    import pandas as pd

    frame = pd.read_parquet(out)
    assert frame["path"].is_unique and summary["images"] == len(frame) == 39 and summary["partitions"] == 13
    assert_rows_equal(frame, expected)
    assert not os.path.exists(str(out) + ".parts")


def test_resume_takes_written_partitions_from_disk(client, folder, expected, tmp_path):
    import pandas as pd

    out = str(tmp_path / "results.csv")

    class Stop(Exception):
        pass

    def stop_after_three(images, partitions):
        if partitions == 3:
            raise Stop

    with pytest.raises(Stop):
        npd.predict(str(folder), FIXTURE, client, out=out, topk=3, partition_size=4, progress=stop_after_three)
    parts_dir = out + ".parts"
    parts = sorted(n for n in os.listdir(parts_dir) if n.startswith("part-"))
    assert len(parts) == 3 and not os.path.exists(out)
    with pytest.raises(ValueError, match="resume"):
        npd.predict(str(folder), FIXTURE, client, out=out, topk=3, partition_size=4)
    with pytest.raises(ValueError, match="partition_size"):
        npd.predict(str(folder), FIXTURE, client, out=out, topk=3, partition_size=5, resume=True)
    # mark one written part: if resume reads it from disk, the mark reaches the output
    marked = os.path.join(parts_dir, parts[0])
    with open(marked, encoding="utf-8") as f:
        first, rest = f.read().split("\n", 1)
    fields = first.split(",")
    path, fields[1] = fields[0], "MARK"
    with open(marked, "w", encoding="utf-8") as f:
        f.write(",".join(fields) + "\n" + rest)

    summary = npd.predict(str(folder), FIXTURE, client, out=out, topk=3, partition_size=4, resume=True)
    assert summary["skipped_partitions"] == 3 and summary["partitions"] == 10 - 3
    frame = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert frame.loc[frame["path"] == path, "label"].item() == "MARK"
    assert_rows_equal(frame, expected)
    assert not os.path.exists(parts_dir)


def test_evaluate_counts_top1_and_top5_over_the_folder(client, folder, expected):
    result = npd.evaluate(str(folder), FIXTURE, client, classes=["a", "b", "c", "d"], partition_size=7)
    truth = {"a": 0, "b": 1, "c": 2}
    scored = [(row, truth[os.path.basename(os.path.dirname(row["path"]))]) for row in expected if row["error"] is None]
    top5 = open_predictor(FIXTURE).predict_files([row["path"] for row, _ in scored], topk=5)
    assert result["count"] == len(scored) == 37 and result["errors"] == 2
    assert result["top1"] == sum(row["top"][0]["index"] == label for row, label in scored) / 37
    assert result["top5"] == sum(label in [t["index"] for t in row["top"]] for row, (_, label) in zip(top5, scored)) / 37
    assert sorted(result["per_class"]) == ["a", "b", "c"] and result["per_class"]["b"]["count"] == 12
    with pytest.raises(ValueError, match="not in classes"):
        npd.evaluate(str(folder), FIXTURE, client, classes=["a", "b"])


def test_bad_arguments_are_clear_errors(client, folder, tmp_path):
    with pytest.raises(ValueError, match="out must end in .parquet or .csv"):
        npd.predict(str(folder), FIXTURE, client, out=str(tmp_path / "results.txt"))
    with pytest.raises(ValueError, match="partition_size must be a positive int"):
        npd.predict(str(folder), FIXTURE, client, partition_size=0)
    with pytest.raises(ValueError, match="resume=True needs out="):
        npd.predict(str(folder), FIXTURE, client, resume=True)
    with pytest.raises(FileNotFoundError):
        npd.predict(str(folder), str(tmp_path / "missing.npz"), client)


def test_command_writes_parquet_and_says_the_throughput(folder, expected, tmp_path, capsys):
    """`predict --engine dask --workers 2` starts its own local cluster (processes, one thread each)."""
    import pandas as pd

    from npmobilenet.cli import main

    out = str(tmp_path / "results.parquet")
    environment = dict(os.environ)
    code = main(["predict", str(folder), "--weights", FIXTURE, "--engine", "dask", "--workers", "2",
                 "--out", out, "--topk", "3", "--partition-size", "8"])
    assert code == 0
    assert dict(os.environ) == environment     # the nanny's pre-spawn variables do not stay in the caller
    printed = capsys.readouterr().out
    assert "39 image(s)" in printed and "images/s on 2 worker(s)" in printed and "2 unreadable" in printed
    assert_rows_equal(pd.read_parquet(out), expected)

    assert main(["predict", str(folder), "--weights", FIXTURE, "--engine", "dask", "--workers", "1"]) != 0
    assert "--out results.parquet (or results.csv) is required" in capsys.readouterr().err
    code = main(["predict", str(folder), "--weights", FIXTURE, "--engine", "dask", "--scheduler", "tcp://127.0.0.1:1",
                 "--workers", "2", "--out", out])
    assert code != 0 and "give one" in capsys.readouterr().err
