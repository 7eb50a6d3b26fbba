"""Results of a distributed run: rows as columns, one part file per partition, and the output file.

Columns, one row per image, in the order the paths were listed:

    path, label, class_index, probability          the top-1 class (label empty when unnamed)
    label_2, class_index_2, probability_2, ...     ranks 2..k when topk > 1
    error                                          empty, or why the image could not be read

A run writing `OUT` (results.parquet or results.csv) keeps its finished partitions in the
directory `OUT.parts/` (`part-<index>-<digest of its paths>.<ext>`, each written atomically as it
arrives, so memory holds no more than the partitions in flight), with the run's settings in
`run.json`. At the end the parts are copied into `OUT`, one after another (atomically), and the
directory is removed. A run that stopped leaves the directory: `resume=True` (`--resume`) skips
every partition whose part is there, after checking the settings are the same.
"""
import csv
import hashlib
import io
import json
import os
import shutil

from npmobilenet.io.files import atomic_write

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def output_format(out):
    """'parquet' or 'csv', from the extension of `out`; ValueError otherwise."""
    extension = os.path.splitext(os.fspath(out))[1].lower()
    if extension not in FORMATS:
        raise ValueError(f"out must end in .parquet or .csv (the output's format), got {os.fspath(out)!r}")
    return FORMATS[extension]


def column_names(topk):
    names = ["path", "label", "class_index", "probability"]
    for rank in range(2, topk + 1):
        names += [f"label_{rank}", f"class_index_{rank}", f"probability_{rank}"]
    return names + ["error"]


def rows_to_columns(rows, topk):
    """Predictor rows ({"path", "top": [{"rank", "index", "label", "probability"}], "error"}) ->
    {column: list}; ranks an image lacks (an error, or fewer classes than topk) are None."""
    columns = {name: [] for name in column_names(topk)}
    for row in rows:
        columns["path"].append(row["path"])
        top = row["top"]
        for rank in range(1, topk + 1):
            suffix = "" if rank == 1 else f"_{rank}"
            entry = top[rank - 1] if rank <= len(top) else None
            columns["label" + suffix].append(None if entry is None else entry["label"])
            columns["class_index" + suffix].append(None if entry is None else entry["index"])
            columns["probability" + suffix].append(None if entry is None else entry["probability"])
        columns["error"].append(row["error"])
    return columns


def arrow_schema(topk):
    import pyarrow as pa

    kinds = {"label": pa.string(), "class_index": pa.int64(), "probability": pa.float64()}
    fields = [pa.field("path", pa.string())]
    for name in column_names(topk)[1:-1]:
        fields.append(pa.field(name, kinds[name.rstrip("_0123456789")]))
    return pa.schema(fields + [pa.field("error", pa.string())])


def columns_to_frame(columns, topk):
    """{column: list} -> pandas DataFrame (class indices as nullable Int64)."""
    import pandas as pd

    frame = pd.DataFrame(columns, columns=column_names(topk))
    return frame.astype({name: "Int64" for name in frame.columns if name.startswith("class_index")})


def paths_digest(paths):
    """A short digest naming a partition by its paths (so a listing that changed is not skipped)."""
    digest = hashlib.sha1()
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    return digest.hexdigest()[:12]


class PartStore:
    """The part files of a run writing `out` (see the module docstring)."""

    def __init__(self, out, topk, settings, resume=False):
        self.out = os.fspath(out)
        self.format = output_format(out)
        self.topk = topk
        self.directory = self.out + ".parts"
        self.settings = dict(settings, topk=topk, format=self.format)
        self.names = {}          # partition index -> its part file's name, this run's parts
        self.skipped = 0
        settings_file = os.path.join(self.directory, "run.json")
        if os.path.isdir(self.directory):
            if not resume:
                raise ValueError(f"{self.directory} holds the parts of an earlier run that stopped: pass "
                                 f"resume=True (--resume) to continue it, or delete the directory to start over")
            try:
                with open(settings_file, encoding="utf-8") as f:
                    earlier = json.load(f)
            except (OSError, ValueError) as exc:
                raise ValueError(f"{settings_file} cannot be read ({exc}): delete {self.directory} to start over") from None
            changed = sorted(k for k in set(earlier) | set(self.settings) if earlier.get(k) != self.settings.get(k))
            if changed:
                was = ", ".join(f"{k}={earlier.get(k)!r}" for k in changed)
                raise ValueError(f"cannot resume: {self.directory} was written with {was}; run with those "
                                 f"settings, or delete the directory to start over")
            self.existing = set(os.listdir(self.directory))
        else:
            self.existing = set()   # the directory is made with the first part: a run failing before leaves nothing

    def _make_directory(self):
        if not os.path.isdir(self.directory):
            os.mkdir(self.directory)
            text = json.dumps(self.settings, indent=1, sort_keys=True).encode("utf-8")
            atomic_write(os.path.join(self.directory, "run.json"), lambda f: f.write(text))

    def part_name(self, index, paths):
        return f"part-{index:06d}-{paths_digest(paths)}.{self.format}"

    def done(self, index, paths):
        """Whether partition `index` (with exactly these paths) was written by an earlier run; the
        part is then counted as this run's."""
        name = self.part_name(index, paths)
        if name in self.existing:
            self.names[index] = name
            self.skipped += 1
            return True
        return False

    def write(self, index, paths, columns):
        """Write partition `index` (its columns) as a part file, atomically."""
        self._make_directory()
        name = self.part_name(index, paths)
        path = os.path.join(self.directory, name)
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pydict(columns, schema=arrow_schema(self.topk))
            atomic_write(path, lambda f: pq.write_table(table, f))
        else:
            atomic_write(path, lambda f: _write_csv(f, columns, header=False))
        self.names[index] = name

    def finish(self):
        """Copy every part of this run into `out`, in partition order (one part in memory at a
        time), atomically; then remove the parts directory. Returns `out`."""
        parts = [os.path.join(self.directory, self.names[index]) for index in sorted(self.names)]
        if self.format == "parquet":
            import pyarrow.parquet as pq

            def write(f):
                with pq.ParquetWriter(f, arrow_schema(self.topk)) as writer:
                    for part in parts:
                        writer.write_table(pq.read_table(part, schema=arrow_schema(self.topk)))
        else:
            def write(f):
                _write_csv(f, {name: [] for name in column_names(self.topk)}, header=True)
                for part in parts:
                    with open(part, "rb") as source:
                        shutil.copyfileobj(source, f)
        atomic_write(self.out, write)
        shutil.rmtree(self.directory)
        return self.out


def _write_csv(f, columns, header):
    """Columns as CSV rows to the binary file `f` (probabilities as repr: they read back exactly)."""
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    writer = csv.writer(text)
    if header:
        writer.writerow(list(columns))
    for values in zip(*columns.values()):
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
    text.flush()
    text.detach()
