"""``zoo data``: check, describe and convert detection datasets (COCO, Roboflow COCO, YOLO, Pascal VOC;
:mod:`zoo.data.formats`)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check, describe and convert datasets",
                       description="Datasets in COCO, Roboflow COCO, YOLO or Pascal VOC layout (detected).")
    commands = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = commands.add_parser("check", help="list every problem of a dataset",
                            description="Every problem with its file (and line): missing or unreadable images, label "
                                        "files without images, class ids out of range, malformed lines, boxes "
                                        "outside the image or of zero area, duplicate ids. Exit status 1 on errors.")
    c.add_argument("dir", metavar="DIR", help="dataset folder")
    c.add_argument("--split", action="append", default=None, help="only this split (repeatable; default: all)")
    c.set_defaults(func=_check)
    s = commands.add_parser("stats", help="per-class counts and a box-size histogram",
                            description="Images and boxes per class and split, and a PNG of the class counts and "
                                        "box sizes (needs zoo[plots]).")
    s.add_argument("dir", metavar="DIR", help="dataset folder")
    s.add_argument("--out", default="data_stats.png", metavar="PNG", help="the plot (default: data_stats.png)")
    s.set_defaults(func=_stats)
    v = commands.add_parser("convert", help="write a dataset in another layout",
                            description="Write every split of SRC to the new folder DST as COCO (zoo's layout), "
                                        "YOLO or Pascal VOC. SRC must pass `zoo data check`.")
    v.add_argument("src", metavar="SRC", help="dataset folder")
    v.add_argument("dst", metavar="DST", help="new folder")
    v.add_argument("--to", required=True, choices=("coco", "yolo", "voc"), help="the layout to write")
    v.set_defaults(func=_convert)


def _splits(args: argparse.Namespace) -> tuple[str, list[str]]:
    from zoo.data.formats import detect_format, list_splits

    fmt = detect_format(args.dir)
    available = list_splits(args.dir, fmt)
    wanted = getattr(args, "split", None) or available
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ValueError(f"{args.dir} has no split {', '.join(missing)} (it has: {', '.join(available) or 'none'})")
    return fmt, wanted


def _check(args: argparse.Namespace) -> int:
    from zoo.data.formats import check, read_split

    fmt, splits = _splits(args)
    print(f"{args.dir}: {fmt} dataset, splits {', '.join(splits)}")
    errors = 0
    for split in splits:
        data = read_split(args.dir, split, fmt)
        problems = check(data)
        for problem in problems:
            print(problem)
        count = sum(p.severity == "error" for p in problems)
        errors += count
        print(f"{split}: {len(data.coco['images'])} images, {len(data.coco['annotations'])} boxes, "
              f"{len(data.coco['categories'])} classes: "
              + (f"{count} error{'s' * (count != 1)}" if count else "ok")
              + (f", {len(problems) - count} warnings" if len(problems) > count else ""))
    return 1 if errors else 0


def _stats(args: argparse.Namespace) -> int:
    from zoo.data.formats import read_split
    from zoo.data.stats import format_stats, plot_box_sizes, split_stats

    fmt, splits = _splits(args)
    stats = {}
    for split in splits:
        stats[split] = split_stats(read_split(args.dir, split, fmt))
        print(format_stats(split, stats[split]))
    print(f"wrote {plot_box_sizes(stats, args.out)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from zoo.data.formats import convert, detect_format

    fmt = detect_format(args.src)
    for warning in convert(args.src, args.dst, args.to, fmt):
        print(f"warning: {warning}")
    print(f"wrote {args.dst} ({fmt} -> {args.to})")
    return 0
