"""The index's project names and per-project metadata, fetched politely and cached on disk (resumable)."""
from __future__ import annotations

import hashlib
import http.client
import json
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

from pypi_text import normalise_name

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
USER_AGENT = "nlp_decouple-dataset-builder (research; one request per project)"
DESCRIPTION_CACHE_CHARS = 12_000  # the text keeps ~800 cleaned characters; markup can take many raw ones
RETRIES = 4


_local = threading.local()  # one kept-alive connection per worker thread: no TLS handshake per request


def _connection(scheme: str, netloc: str) -> http.client.HTTPConnection:
    key = (scheme, netloc)
    if getattr(_local, "key", None) != key:
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        _local.key, _local.conn = key, cls(netloc, timeout=60)
    return _local.conn


def _get(url: str, accept: str) -> tuple[bytes, str] | None:
    """The body and content type, or None on 404; follows redirects, retries other failures with back-off."""
    for attempt in range(RETRIES):
        parts = urllib.parse.urlsplit(url)
        conn = _connection(parts.scheme, parts.netloc)
        try:
            conn.request("GET", urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")),
                         headers={"Accept": accept, "User-Agent": USER_AGENT})
            answer = conn.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            _local.key = None
            if attempt == RETRIES - 1:
                raise RuntimeError(f"{url}: {type(err).__name__}: {err}") from None
        else:
            if answer.status == 200:
                return body, answer.headers.get("Content-Type", "")
            if answer.status == 404:
                return None
            if answer.status in (301, 302, 303, 307, 308) and answer.headers.get("Location"):
                url = urllib.parse.urljoin(url, answer.headers["Location"])
                continue
            if attempt == RETRIES - 1:
                raise RuntimeError(f"{url}: HTTP {answer.status}")
        time.sleep(2 ** attempt)
    raise RuntimeError(f"{url}: too many redirects or retries")


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self._in_a = False

    def handle_starttag(self, tag, attrs):
        self._in_a = tag == "a"

    def handle_endtag(self, tag):
        self._in_a = False

    def handle_data(self, data):
        if self._in_a and data.strip():
            self.names.append(data.strip())


def parse_index(body: bytes, content_type: str) -> list[str]:
    """Project names from a Simple API root page: PEP 691 JSON or PEP 503 HTML."""
    if "json" in content_type:
        return [p["name"] for p in json.loads(body)["projects"]]
    parser = _Anchors()
    parser.feed(body.decode("utf-8"))
    return parser.names


def project_names(index_url: str, cache: Path, offline: bool = False) -> list[str]:
    path = cache / "index_names.json"
    if not path.exists():
        if offline:
            sys.exit(f"error: no cached index at {path}: run once without --offline")
        body, content_type = _get(index_url.rstrip("/") + "/", f"{SIMPLE_JSON}, text/html;q=0.1")
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"index_url": index_url, "fetched": time.strftime("%Y-%m-%d"),
                                    "names": sorted(set(parse_index(body, content_type)))}))
    return json.loads(path.read_text())["names"]


def trim(metadata: dict) -> dict:
    """What the dataset needs from a JSON API answer."""
    info = metadata["info"]
    return {"name": info.get("name") or "", "version": info.get("version") or "",
            "summary": info.get("summary") or "",
            "description": (info.get("description") or "")[:DESCRIPTION_CACHE_CHARS],
            "description_content_type": info.get("description_content_type") or "",
            "classifiers": list(info.get("classifiers") or [])}


def _cache_path(cache: Path, name: str) -> Path:
    key = normalise_name(name)
    return cache / "projects" / hashlib.sha1(key.encode()).hexdigest()[:2] / f"{key}.json"


def _fetch_one(name: str, template: str, cache: Path) -> None:
    path = _cache_path(cache, name)
    if path.exists():
        return
    got = _get(template.format(name=normalise_name(name)), "application/json")
    record = {"missing": True} if got is None else trim(json.loads(got[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # atomic: an interrupted run leaves no half-written record


def fetch_projects(names: list[str], template: str, cache: Path, workers: int,
                   offline: bool = False) -> dict[str, dict]:
    """Each name's trimmed metadata (``{"missing": True}`` for a 404), keyed by normalised name."""
    todo = [n for n in names if not _cache_path(cache, n).exists()]
    if todo and not offline:
        print(f"fetching {len(todo)} of {len(names)} projects with {workers} workers", file=sys.stderr)
        failed = 0
        with ThreadPoolExecutor(workers) as pool:
            for done, future in enumerate([pool.submit(_fetch_one, n, template, cache) for n in todo], 1):
                try:
                    future.result()
                except Exception as err:  # noqa: BLE001 - one project failing must not stop the others
                    failed += 1
                    print(f"failed: {type(err).__name__}: {err}", file=sys.stderr)
                if done % 5000 == 0:
                    print(f"  {done}/{len(todo)} ({failed} failed)", file=sys.stderr)
    records = {}
    for name in names:
        path = _cache_path(cache, name)
        if path.exists():  # a project that failed every retry is left out (and fetched on the next run)
            records[normalise_name(name)] = json.loads(path.read_text())
    return records
