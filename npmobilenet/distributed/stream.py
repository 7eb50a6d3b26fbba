"""The client's loop: partitions of image paths go to the workers as tasks, a bounded number at a
time, and each result is handed on as it arrives.

The listing is consumed lazily and at most about two partitions per worker thread are in flight,
so the client's memory does not grow with the number of images. Faults: a worker that dies takes
its tasks with it and the scheduler runs them again on another worker (Dask's
`distributed.scheduler.allowed-failures` deaths per task, 3 by default); a result arrives once
per task whatever happened, so every partition is handed on exactly once. A task that fails for
its own reason (the weights unreadable on a worker) stops the run with that error.
"""
import time
import uuid

from npmobilenet.distributed.worker import classify_partition


def partitions_of(paths, size):
    """(index, [path, ...]) for consecutive runs of `size` paths of the iterable `paths`, lazily."""
    chunk, index = [], 0
    for path in paths:
        chunk.append(path)
        if len(chunk) == size:
            yield index, chunk
            chunk, index = [], index + 1
    if chunk:
        yield index, chunk


class Progress:
    """Images done: a tqdm bar on stderr when `show` is True and tqdm is installed, and/or a
    callable `show(images_done, partitions_done)`."""

    def __init__(self, show, skipped_images=0):
        self.callback = show if callable(show) else None
        self.bar = None
        if show is True:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(unit="img", desc="npmobilenet", initial=skipped_images, smoothing=0.1)
        self.images = self.partitions = 0

    def update(self, images):
        self.images += images
        self.partitions += 1
        if self.bar is not None:
            self.bar.update(images)
        if self.callback is not None:
            self.callback(self.images, self.partitions)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run_partitions(client, spec, partitions, topk, batch_size, handle, progress=None):
    """Classify every partition of `partitions` ((index, paths) pairs) on the cluster of `client`;
    `handle(index, paths, rows)` gets each partition's rows as it completes (completion order).

    Returns {"images", "partitions", "seconds"} for the partitions run here.
    """
    from distributed import as_completed

    threads = max(1, sum(client.nthreads().values()))
    limit = 2 * threads + 1
    token = uuid.uuid4().hex[:8]
    pending = {}
    queue = as_completed()
    listing = iter(partitions)

    def submit_next():
        for index, paths in listing:
            future = client.submit(classify_partition, paths, spec, topk, batch_size, pure=False,
                                   key=f"npmobilenet-partition-{index}-{token}")
            pending[future] = (index, paths)
            queue.add(future)
            return True
        return False

    images = done = 0
    start = time.perf_counter()
    try:
        while len(pending) < limit and submit_next():
            pass
        for future in queue:
            index, paths = pending.pop(future)
            rows = future.result()
            future.release()
            handle(index, paths, rows)
            images += len(rows)
            done += 1
            if progress is not None:
                progress.update(len(rows))
            while len(pending) < limit and submit_next():
                pass
    finally:
        if pending:
            client.cancel(list(pending))
    return {"images": images, "partitions": done, "seconds": time.perf_counter() - start}
