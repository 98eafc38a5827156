"""Build ``datasets/pypi_topics``: Python package descriptions labelled with their one ``Topic ::`` family.

1. **Index.** The project names from the package index's Simple API root (PEP 691 JSON when the index
   serves it, else the PEP 503 HTML page). The index URL is ``--index-url``, else ``PIP_INDEX_URL``, else
   ``pip config get global.index-url``, else pip's own built-in default. The name list is cached, so a
   rerun samples from the same snapshot.
2. **Sample.** The first ``--sample`` names of a permutation of the sorted names seeded with ``--seed``
   (a larger sample extends a smaller one, so a rerun with more names reuses the cache).
3. **Fetch.** Each sampled project's metadata from the index's JSON API (``--json-url``, a template with
   ``{name}``; by default ``<index root>/pypi/{name}/json``, the path the reference index serves next to its
   Simple API) with a thread pool, timeouts and retries. Each answer is cached under ``--cache`` as one
   small JSON file (summary, the first characters of the description, classifiers), so a rerun resumes.
4. **Label.** A project is kept when its trove classifiers name exactly one second-level ``Topic :: X``
   family; X is the label. Families with fewer than ``--min-class`` texts after cleaning are dropped; larger
   than ``--max-class``, cut to that many by a hash of the name (independent of the split's hash).
5. **Text.** summary + " " + the first ``--desc-chars`` characters of the cleaned long description
   (see ``pypi_markup.py``); texts under ``--min-chars`` characters are dropped; identical texts are kept
   once (dropped entirely when their projects disagree on the label).
6. **Split.** 80/10/10 train/validation/test by a hash of the project's normalised name (PEP 503).

    python benchmarks/datasets/build_pypi_topics.py --sample 200000 --cache ../_cache_pypi \
        --out datasets/pypi_topics
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pypi_fetch import fetch_projects, project_names
from pypi_text import build_text, normalise_name, topic_family
from pypi_card import write_card, write_splits

SPLITS = ("train", "validation", "test")
BUILD_INFO = "build_info.json"  # what the card is written from, so a floor can be added without a rebuild


def default_index_url() -> str:
    """The index pip itself would use: its environment, its configuration, then its built-in default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].split()[0]
    got = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                         capture_output=True, text=True, check=False)
    if got.returncode == 0 and got.stdout.strip():
        return got.stdout.strip()
    from pip._internal.models.index import PyPI  # pip's built-in default index
    return PyPI.simple_url


def json_url_template(index_url: str) -> str:
    root = index_url.rstrip("/")
    if root.endswith("/simple"):
        root = root[: -len("/simple")]
    return root + "/pypi/{name}/json"


def split_of(name: str) -> str:
    bucket = int(hashlib.sha256(normalise_name(name).encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


def cap_rank(name: str) -> str:
    return hashlib.sha256(("cap:" + normalise_name(name)).encode()).hexdigest()


def sample_names(names: list[str], size: int, seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(len(names))
    return [names[i] for i in order[:size]]


def label_and_clean(records: dict[str, dict], desc_chars: int, min_chars: int) -> tuple[list[dict], Counter]:
    """One row per kept project, sorted by normalised name; ``dropped`` counts why the others went."""
    dropped: Counter = Counter()
    rows = []
    for key in sorted(records):
        record = records[key]
        if record.get("missing"):
            dropped["not found"] += 1
            continue
        family = topic_family(record["classifiers"])
        if family is None:
            dropped["no Topic classifier" if not any(c.startswith("Topic ::") for c in record["classifiers"])
                    else "several Topic families"] += 1
            continue
        text = build_text(record["summary"], record["description"], desc_chars)
        if len(text) < min_chars:
            dropped["text under min chars"] += 1
            continue
        rows.append({"name": key, "text": text, "label": family})
    by_text: dict[str, list[dict]] = {}
    for row in rows:
        by_text.setdefault(row["text"], []).append(row)
    unique = []
    for group in by_text.values():
        if len({r["label"] for r in group}) > 1:
            dropped["identical text, conflicting labels"] += len(group)
            continue
        dropped["identical text (kept once)"] += len(group) - 1
        unique.append(group[0])
    return sorted(unique, key=lambda r: r["name"]), dropped


def keep_frequent(rows: list[dict], min_class: int, max_class: int) -> tuple[list[dict], list[str], dict, dict]:
    """Families with at least ``min_class`` texts, each cut to its ``max_class`` projects of smallest
    ``cap_rank`` (a hash independent of the split's, so a cut keeps the 80/10/10 shares)."""
    counts = Counter(r["label"] for r in rows)
    names = sorted(label for label, n in counts.items() if n >= min_class)
    rare = {label: n for label, n in sorted(counts.items()) if n < min_class}
    capped = {label: n for label, n in sorted(counts.items()) if label in names and n > max_class}
    kept = []
    for label in names:
        mine = [r for r in rows if r["label"] == label]
        kept += sorted(mine, key=lambda r: cap_rank(r["name"]))[:max_class]
    return sorted(kept, key=lambda r: r["name"]), names, rare, capped


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-url", help="Simple API root (default: pip's own index URL)")
    parser.add_argument("--json-url", help="per-project JSON metadata URL with {name} "
                                           "(default: <index root>/pypi/{name}/json)")
    parser.add_argument("--sample", type=int, default=200_000, help="how many project names to fetch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the name sample")
    parser.add_argument("--cache", type=Path, help="folder for the raw answers (outside the repo)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write (Hub layout)")
    parser.add_argument("--workers", type=int, default=24, help="concurrent requests")
    parser.add_argument("--desc-chars", type=int, default=800, help="characters of cleaned long description kept")
    parser.add_argument("--min-chars", type=int, default=20, help="shorter texts are dropped")
    parser.add_argument("--min-class", type=int, default=150, help="families with fewer texts are dropped")
    parser.add_argument("--max-class", type=int, default=6000,
                        help="larger families keep this many texts (a name-hash sample), for size and balance")
    parser.add_argument("--floor", type=Path, help="a benchmarks/tfidf_floor.py JSON to report in the card")
    parser.add_argument("--card-only", action="store_true",
                        help="rewrite README.md from --out's build_info.json (and --floor); build nothing")
    parser.add_argument("--offline", action="store_true", help="build from the cache only; fetch nothing")
    args = parser.parse_args(argv)
    if args.cache is None and not args.card_only:
        parser.error("--cache is required to build: a folder outside the repository for the raw answers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    floor = json.loads(args.floor.read_text()) if args.floor else None
    if args.card_only:
        write_card(args.out, json.loads((args.out / BUILD_INFO).read_text()), floor)
        return 0
    index_url = args.index_url or default_index_url()
    names = project_names(index_url, args.cache, offline=args.offline)
    sample = sample_names(names, args.sample, args.seed)
    records = fetch_projects(sample, args.json_url or json_url_template(index_url), args.cache,
                             args.workers, offline=args.offline)
    rows, dropped = label_and_clean(records, args.desc_chars, args.min_chars)
    rows, label_names, rare, capped = keep_frequent(rows, args.min_class, args.max_class)
    splits = {s: [r for r in rows if split_of(r["name"]) == s] for s in SPLITS}
    write_splits(args.out, splits, label_names)
    command = "python benchmarks/datasets/build_pypi_topics.py " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    settings = {k: v for k, v in vars(args).items() if k in ("seed", "desc_chars", "min_chars", "min_class",
                                                             "max_class")}
    info = {"date": datetime.date.today().isoformat(), "command": command, "index_names": len(names),
            "sampled": len(sample), "fetched": len(records), "dropped": dict(sorted(dropped.items())),
            "rare": rare, "capped": capped, "label_names": label_names, "settings": settings,
            "counts": {s: dict(sorted(Counter(r["label"] for r in rows).items())) for s, rows in splits.items()}}
    (args.out / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    write_card(args.out, info, floor)
    print(f"{len(rows)} texts, {len(label_names)} classes: "
          + ", ".join(f"{s} {len(splits[s])}" for s in SPLITS)
          + f"; dropped {dict(dropped)}; rare {rare}; capped {capped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
