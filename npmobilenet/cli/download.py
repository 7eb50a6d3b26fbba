"""`npmobilenet download NAME [--dir DIR] [--force]` and `npmobilenet download --list`: fetch registry
weights (`npmobilenet.io.hub.download`) into $NPMOBILENET_HOME/weights, checked against the sha256
prefix in the file name and written atomically. $NPMOBILENET_MIRROR=BASE_URL replaces the base URL.

    npmobilenet download mobilenet_v2.IMAGENET1K_V1
    npmobilenet download --list          # every name, where each file is found (if anywhere)
"""
import json
import os
import sys


def add_arguments(parser):
    parser.add_argument("name", nargs="?", metavar="NAME", help="weights name, e.g. mobilenet_v2.IMAGENET1K_V1")
    parser.add_argument("--list", action="store_true", help="list the weights names, their files and where each is found")
    parser.add_argument("--dir", default=None, metavar="DIR", help="directory to write to (default $NPMOBILENET_HOME/weights)")
    parser.add_argument("--force", action="store_true", help="download even if an intact copy is already there")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout instead of text")


def _listing():
    from npmobilenet.io import hub, registry

    rows = []
    for name in registry.names():
        entry = registry.get(name)
        found = next((path for _, path in hub.candidates(entry) if os.path.isfile(path)), None)
        rows.append({"name": name, "arch": entry.arch, "file_name": entry.file_name, "url": hub.url_of(entry),
                     "reported_top1": entry.reported_top1, "reported_top5": entry.reported_top5, "found": found})
    return rows


def run(args):
    from npmobilenet.io import hub, registry

    if args.list:
        if args.name:
            raise ValueError("give a NAME or --list, not both")
        rows = _listing()
        if args.json:
            print(json.dumps({"weights_dir": hub.weights_dir(), "torch_hub_dir": hub.torch_hub_dir(),
                              "weights": rows}, indent=1))
            return 0
        width = max(len(r["name"]) for r in rows)
        print(f"{'name':<{width}}  {'top-1':>6}  {'top-5':>6}  where (top-1/top-5: torchvision's reports, ImageNet-1k val)")
        for r in rows:   # segmentation and detection weights report other metrics (their meta): '-'
            top1, top5 = (f"{v:6.2f}" if v is not None else f"{'-':>6}" for v in (r["reported_top1"], r["reported_top5"]))
            print(f"{r['name']:<{width}}  {top1}  {top5}  "
                  f"{r['found'] or 'not downloaded (' + r['file_name'] + ')'}")
        print(f"looked in {hub.weights_dir()}, {hub.torch_hub_dir()} and the {hub.OFFLINE_PACKAGE} package")
        return 0
    if not args.name:
        raise ValueError(f"give a weights NAME (one of: {', '.join(registry.names())}) or --list")
    entry = registry.get(args.name)
    print(f"downloading {entry.file_name} from {hub.url_of(entry)}", file=sys.stderr)
    # network errors are OSErrors, a corrupted file a ValueError: one line each (cli.main), no file left
    path = hub.download(args.name, args.dir, progress=not args.no_progress, force=args.force)
    if args.json:
        print(json.dumps({"name": args.name, "path": path, "sha256_prefix": entry.sha256_prefix}))
    else:
        print(f"{args.name}: {path} (sha256 {entry.sha256_prefix}... checked)")
    return 0
