"""Keep a protocol's progress without its weights, to carry it to another machine or commit it, and put it back.

    python benchmarks/protocol_archive.py save runs/protocol docs/results/protocol_runs
    python benchmarks/protocol_archive.py restore docs/results/protocol_runs runs/protocol

``save`` copies every study (a consistent SQLite snapshot, also while a tune writes to it), tuned recipe and
finished run's records (config, per-epoch metrics, results, test predictions): what ``tune`` needs to go on
and ``report`` needs to tabulate. Left out: weights (``best/``, ``checkpoints/``, ``last/``), tokenizer copies,
locks, and runs still in progress (a folder with checkpoints and no results.json). After ``restore``, rerunning
``benchmarks/protocol.sh`` with the same code goes on where the archive stopped: a trial that was running is
run again from its start, finished trials and runs are kept. The code must be the same as the archive's
(each run's results.json names it); other code is refused unless told otherwise, as for any run folder.
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
from pathlib import Path

WEIGHTS = {"best", "checkpoints", "last", "tokenizer"}  # folders of a run that hold weights or copies
SKIPPED_SUFFIXES = (".lock", ".safetensors", ".pt", ".bin")
KEPT = "README.md"  # the archive's own description, kept across saves


def in_progress(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir() and not (folder / "results.json").is_file()


def save(root: Path, dest: Path) -> list[Path]:
    """Copy ``root``'s records into ``dest`` (replacing what ``dest`` held, except its README.md, which
    describes the archive); return the files written."""
    if not root.is_dir():
        raise SystemExit(f"error: {root} is not a folder: give the protocol's OUT_ROOT")
    for old in dest.iterdir() if dest.is_dir() else []:
        if old.is_dir():
            shutil.rmtree(old)
        elif old.name != KEPT:
            old.unlink()
    written = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or WEIGHTS & set(rel.parts[:-1]) or path.name.endswith(SKIPPED_SUFFIXES):
            continue
        if any(in_progress(parent) for parent in path.parents if root in parent.parents):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".db":  # a snapshot SQLite itself makes consistent
            with sqlite3.connect(path) as src, sqlite3.connect(target) as copy:
                src.backup(copy)
        else:
            shutil.copy2(path, target)
        written.append(target)
    return written


def restore(archive: Path, root: Path) -> None:
    """Put an archive back under ``root`` (files already there are overwritten by the archive's)."""
    if not archive.is_dir():
        raise SystemExit(f"error: {archive} is not a folder: give an archive written by 'save'")
    shutil.copytree(archive, root, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.action == "save":
        files = save(args.source, args.dest)
        print(f"{len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB in {args.dest}")
    else:
        restore(args.source, args.dest)
        print(f"restored {args.source} into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
