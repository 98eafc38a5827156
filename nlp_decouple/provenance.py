"""Which code and which data made a run: recorded in results.json and checkpoints, and part of what a run
must share with another to stand in for it (resume, ``compare`` and ``tune`` reuse).

The code version is the git tree of the package folder (so a commit that touches only docs or benchmarks
keeps it), plus a hash of the uncommitted changes to the package when there are any; outside a git
checkout it is the installed package version. The data fingerprint hashes every loaded split's texts and
labels (after caps, carves and label noise) and the label names: the same content gives the same
fingerprint on any machine, a changed file, cap or carve gives another.
"""
from __future__ import annotations

import hashlib
import subprocess
from array import array
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

PACKAGE_DIR = Path(__file__).resolve().parent
HASH_CHARS = 16  # hex characters kept of a hash: 64 bits, plenty to tell versions apart


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return proc.stdout.decode("utf-8", "surrogateescape") if proc.returncode == 0 else None


def _package_version() -> str:
    try:
        return metadata.version("nlp_decouple")
    except metadata.PackageNotFoundError:
        return "unknown"


def _uncommitted_hash() -> str | None:
    """A hash of the package's changes against HEAD (staged or not) and of its untracked files; None when
    the package folder is clean."""
    diff = _git("diff", "HEAD", "--binary", "--", ".") or ""
    untracked = (_git("ls-files", "--others", "--exclude-standard", "-z", "--", ".") or "").split("\0")
    untracked = sorted(p for p in untracked if p)
    if not diff and not untracked:
        return None
    digest = hashlib.sha256(diff.encode("utf-8", "surrogateescape"))
    for name in untracked:
        digest.update(b"\0" + name.encode() + b"\0" + (PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:HASH_CHARS]


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"id", "commit", "tree", "dirty", "package_version"}`` of the running package; ``id`` is what
    runs are compared on: ``git:<tree>[+dirty:<hash>]``, or ``package:<version>`` outside a checkout.
    Computed once per process: the code a process runs is the code it imported."""
    version = _package_version()
    tree = _git("rev-parse", "HEAD:./")  # the package folder's tree object, when the folder is tracked
    if tree is None:
        return {"id": f"package:{version}", "commit": None, "tree": None, "dirty": None, "package_version": version}
    tree, commit, dirty = tree.strip(), (_git("rev-parse", "HEAD") or "").strip() or None, _uncommitted_hash()
    ident = f"git:{tree[:HASH_CHARS]}" + (f"+dirty:{dirty}" if dirty else "")
    return {"id": ident, "commit": commit, "tree": tree, "dirty": dirty, "package_version": version}


def _rows(split) -> Iterable[tuple[list[str], list[int]]]:
    """A split's (texts, labels) in batches: a ``datasets.Dataset`` streamed from its Arrow table, or any
    mapping with ``text`` and ``label`` lists."""
    if hasattr(split, "iter"):
        for batch in split.select_columns(["text", "label"]).iter(batch_size=4096):
            yield batch["text"], batch["label"]
    else:
        yield list(split["text"]), list(split["label"])


def data_fingerprint(splits: Mapping[str, Any], label_names: list[str]) -> str:
    """A content hash of the loaded splits (each text length-prefixed, so no two lists of texts collide by
    concatenation) and the label names, independent of where and how the data is stored."""
    digest = hashlib.sha256()
    for name in ["labels", *label_names]:
        digest.update(name.encode() + b"\0")
    for split in sorted(splits):
        digest.update(b"\1split\0" + split.encode() + b"\0")
        for texts, labels in _rows(splits[split]):
            for text in texts:
                data = text.encode("utf-8", "surrogatepass")
                digest.update(len(data).to_bytes(8, "little") + data)
            digest.update(array("q", labels).tobytes())
    return digest.hexdigest()[:HASH_CHARS]


def stale_reason(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Why a run recorded as ``{"code": id, "data": fingerprint}`` cannot stand in for one made now, or None.
    A run made before versions were recorded has neither and is stale."""
    if recorded.get("code") != current["code"]:
        return f"by other code ({recorded.get('code') or 'not recorded'}, now {current['code']})"
    if current.get("data") is not None and recorded.get("data") != current["data"]:
        return f"on other data (fingerprint {recorded.get('data') or 'not recorded'}, now {current['data']})"
    return None
