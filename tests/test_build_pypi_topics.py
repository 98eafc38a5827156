"""benchmarks/datasets/build_pypi_topics.py: labels, cleaning, sampling and splits against known answers, and a
whole build against a local index served on 127.0.0.1 (PEP 691 root, per-project JSON, a 404 and a failing
answer that succeeds on retry), rebuilt from its cache alone to the same bytes."""
from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import REPO

from nlp_decouple.config import DataConfig
from nlp_decouple.data import load_text_data

sys.path.insert(0, str(REPO / "benchmarks" / "datasets"))
import build_pypi_topics as build  # noqa: E402
import pypi_fetch  # noqa: E402
from pypi_text import build_text, clean_description, normalise_name, topic_family  # noqa: E402


def test_topic_family_is_the_second_level_when_all_topic_classifiers_share_it():
    assert topic_family(["Topic :: Internet :: WWW/HTTP", "Topic :: Internet", "License :: OSI Approved"]) == "Internet"
    assert topic_family(["Topic :: Scientific/Engineering :: Artificial Intelligence"]) == "Scientific/Engineering"
    assert topic_family(["Topic :: Internet", "Topic :: Software Development :: Libraries"]) is None
    assert topic_family(["Intended Audience :: Developers"]) is None
    assert topic_family(["Topic :: Security :: Cryptography", "Framework :: Topic :: X"]) == "Security"


def test_clean_description_markdown():
    raw = ("# Fast Thing\n\n[![Build](https://ci.example/badge.svg)](https://ci.example)\n\n"
           "A **fast** tool, see [the docs](https://docs.example/x) or <https://home.example/>.\n\n"
           "```python\nimport thing\n```\n\n- lists `items`\n\n[ref]: https://ref.example\n"
           "    'Topic :: Internet :: WWW/HTTP',\n")
    assert clean_description(raw) == "Fast Thing A fast tool, see the docs or <url>. lists items"


def test_clean_description_rest_and_html():
    raw = ("Title\n=====\n\n.. image:: https://img.example/a.png\n   :target: https://x.example\n\n"
           "Uses `Requests <https://r.example>`_ and :func:`thing.run` |badge|.\n\n"
           ".. code-block:: python\n\n>>> run()\n\n<p align=\"center\">Fish &amp; chips at www.fish.example</p>\n"
           "<!-- hidden -->")
    assert clean_description(raw) == "Title Uses Requests and thing.run . Fish & chips at <url>"


def test_addresses_become_placeholders_in_descriptions_and_summaries():
    assert clean_description("Mail dev.team+x@mail.example.com, see github.com/a/b. Or socket.io; setup.py, e.g. "
                             "<https://x.example/z>.") == "Mail <email>, see <url>. Or <url>; setup.py, e.g. <url>."
    assert build_text("On www.example.org/x and docs.example.io", "", 800) == "On <url> and <url>"


def test_email_addresses_in_every_written_form_become_placeholders():
    assert clean_description("Write to ann.lee@uni.example.org, <bob@host.example.com>, [mail us](mailto:team@"
                             "host.example.com) or [carl@x.example.com](mailto:carl@x.example.com).") == \
        "Write to <email>, <email>, mail us or <email>."
    assert clean_description("Ann: ann [at] uni [dot] edu, bob (at) host (dot) org, carl{at}host.org, dan AT host "
                             "DOT com, eve at host dot org.") == "Ann: <email>, <email>, <email>, <email>, <email>."
    assert clean_description("Maintainers: first.last at host.org, jo at gmail.com, Mo Ray (ray at lab.org), "
                             "Ann Lee lee at lab.org, e-mail: kim at lab.org.") == \
        "Maintainers: <email>, <email>, Mo Ray (<email>), Ann Lee <email>, e-mail: <email>."
    assert clean_description("Author: Ann Lee (2020) lee __AT__ ed __DOT__ ac __DOT__ uk and <ann dot lee at gmail "
                             "dot com>.") == "Author: Ann Lee (2020) <email> and <email>."
    # "at" before a site is not an address unless the name looks like a mailbox
    assert clean_description("Docs are available at github.com, contact us at example.com, look at main.py, e.g. "
                             "at example.com.") == \
        "Docs are available at <url>, contact us at <url>, look at main.py, e.g. at <url>."


def test_rest_literal_markers_go_with_their_literal_blocks():
    assert clean_description("Install it with::\n\n    pip install thing\n    thing --run\n\nThen it runs.") == \
        "Install it with: Then it runs."
    assert clean_description("Usage ::\n\n    thing --run\n\nDone.\n\n::\n\n    code only\n\nEnd.") == "Usage Done. End."
    assert clean_description("Uses std::vector and a C++ Foo::Bar.") == "Uses std::vector and a C++ Foo::Bar."
    assert build_text("Example:: of use", "", 800) == "Example: of use"


def test_rest_directives_comments_targets_and_references():
    raw = (".. code-block:: python\n\n    import thing\n\nText after.\n\n.. note:: Mind the gap.\n   Second line.\n\n"
           ".. start-badges\n\n   |a| |b|\n\n.. _Sentry: https://sentry.example.com\n"
           ".. |b| image:: https://b.example/b.svg\n    :target: https://b.example\n\n"
           "See Sentry_, the `blog post`_ and `this`__.")
    assert clean_description(raw) == "Text after. Mind the gap. Second line. See Sentry, the blog post and this."
    assert clean_description("Call :func:`~pkg.run`, read :ref:`the guide <guide>` and :class:`Thing`.") == \
        "Call pkg.run, read the guide and Thing."


def test_underlines_rules_and_table_borders_go():
    raw = ("=====\nTitle\n=====\n\nSection\n-------\n\n| Name | Role |\n|------|:----:|\n| a | b |\n\n"
           "+----+----+\n| x  | y  |\n+====+====+\n\nOne --- two.")
    assert clean_description(raw) == "Title Section Name Role a b x y One two."
    assert clean_description("Bearer token\n::::::::::::\n\nUse it.\n\nCHANGELOG\n\n0.1.0\n:::\nFirst release.") == \
        "Bearer token Use it. CHANGELOG 0.1.0 First release."


def test_html_and_markdown_leftovers_go():
    assert clean_description('<div align="center"><b>Bold</b> &amp; <i>brave</i></div><br/>') == "Bold & brave"
    raw = ("[![badge]][ref] [![ci](https://ci.example/b.svg)](https://ci.example) ![logo] Text "
           "[see [1] here](https://x.example/y) and [Guide][g] and \\*stars\\*.")
    assert clean_description(raw) == "Text see [1] here and Guide and stars."
    raw = ("![[Build Status][build-link]][build-badge] \\[!\\[PyPI version](https://img.example/v.svg)]"
           "(https://x.example/p) Text \\*kept\\* my\\_pkg.")
    assert clean_description(raw) == "Text kept my_pkg."


def test_summaries_get_the_inline_cleaning():
    assert build_text("``aspectlib`` is a `lib <https://x.example>`_ by a.b@c.example.org, Notion&#39;s", "", 800) \
        == "aspectlib is a lib by <email>, Notion's"


def test_build_text_joins_summary_and_description_without_repeating_or_placeholders():
    assert build_text("A parser.", "A parser. It parses things.", 800) == "A parser. It parses things."
    assert build_text("UNKNOWN", "Real words here", 800) == "Real words here"
    assert build_text("Summary only", "UNKNOWN", 800) == "Summary only"
    long = build_text("S", " ".join(["word"] * 400), 50)
    assert long.startswith("S word") and len(long) <= len("S ") + 50 and long.endswith("word")


def test_sample_is_a_seeded_prefix_and_splits_hash_the_normalised_name():
    names = [f"pkg{i}" for i in range(1000)]
    assert build.sample_names(names, 10, 0) == build.sample_names(names, 500, 0)[:10]
    assert build.sample_names(names, 10, 0) != build.sample_names(names, 10, 1)
    assert build.split_of("Foo_Bar") == build.split_of("foo.bar") == build.split_of("foo--bar")
    shares = Counter(build.split_of(f"project-{i}") for i in range(20_000))
    assert abs(shares["train"] / 20_000 - 0.8) < 0.01 and abs(shares["test"] / 20_000 - 0.1) < 0.01


def test_rare_families_go_and_large_ones_keep_their_smallest_cap_ranks():
    rows = [{"name": f"a-{i}", "text": f"a {i}", "label": "A"} for i in range(50)]
    rows += [{"name": f"b-{i}", "text": f"b {i}", "label": "B"} for i in range(7)]
    rows += [{"name": f"c-{i}", "text": f"c {i}", "label": "C"} for i in range(2)]
    kept, names, rare, capped = build.keep_frequent(rows, min_class=3, max_class=10)
    assert names == ["A", "B"] and rare == {"C": 2} and capped == {"A": 50}
    assert [r["name"] for r in kept] == sorted(r["name"] for r in kept)
    expected_a = sorted((f"a-{i}" for i in range(50)), key=build.cap_rank)[:10]
    assert {r["name"] for r in kept if r["label"] == "A"} == set(expected_a)
    assert {r["name"] for r in kept if r["label"] == "B"} == {f"b-{i}" for i in range(7)}


def test_index_url_comes_from_pip_and_the_json_location_from_it(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://mirror.test/simple/")
    assert build.default_index_url() == "http://mirror.test/simple/"
    assert build.json_url_template("http://mirror.test/simple/") == "http://mirror.test/pypi/{name}/json"
    html = b'<html><body><a href="a/">Alpha_One</a>\n<a href="b/">beta</a></body></html>'
    assert pypi_fetch.parse_index(html, "text/html") == ["Alpha_One", "beta"]
    assert pypi_fetch.parse_index(b'{"projects": [{"name": "x"}]}', pypi_fetch.SIMPLE_JSON) == ["x"]


def _project(summary: str, description: str, *topics: str) -> dict:
    return {"info": {"name": "", "version": "1.0", "summary": summary, "description": description,
                     "description_content_type": "text/markdown",
                     "classifiers": ["License :: OSI Approved :: MIT License", *(f"Topic :: {t}" for t in topics)],
                     "extra": "ignored"}, "releases": {"1.0": []}}


NET = (0, 1, 2, 3, 4, 15, 56, 59)  # numbered so that each split gets some of both classes
SCI = (0, 1, 2, 3, 13, 21, 30, 33)
PROJECTS = {
    **{f"net-{i}": _project(f"HTTP client number {i}", f"Sends requests, variant {i}.", "Internet :: WWW/HTTP")
       for i in NET},
    **{f"sci-{i}": _project(f"Solver {i} for equations", f"Integrates ODEs, method {i}.", "Scientific/Engineering")
       for i in SCI},
    "game-0": _project("A card game", "Play cards.", "Games/Entertainment"),  # a family under --min-class
    "both": _project("Two families", "Never kept.", "Internet", "Security"),
    "none": _project("No topic at all", "Never kept."),
    "tiny": _project("", "short", "Internet"),  # under --min-chars
    "copy-a": _project("Same text", "In two projects.", "Internet"),
    "copy-b": _project("Same text", "In two projects.", "Internet"),  # identical text, same label: kept once
    "clash-a": _project("Clashing text", "Labelled twice.", "Internet"),
    "clash-b": _project("Clashing text", "Labelled twice.", "Scientific/Engineering"),  # conflict: both go
}


@pytest.fixture
def index_server():
    seen: Counter = Counter()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook
            seen[self.path] += 1
            if self.path == "/simple/":
                assert pypi_fetch.SIMPLE_JSON in self.headers["Accept"]
                body, kind = json.dumps({"projects": [{"name": n} for n in [*PROJECTS, "gone"]]}), pypi_fetch.SIMPLE_JSON
            elif self.path == "/pypi/sci-3/json" and seen[self.path] == 1:
                return self.send_error(503)  # fails once: the retry gets it
            elif self.path.startswith("/pypi/") and self.path.split("/")[2] in PROJECTS:
                body, kind = json.dumps(PROJECTS[self.path.split("/")[2]]), "application/json"
            else:
                return self.send_error(404)
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body.encode())))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/simple", seen
    server.shutdown()


def test_build_fetches_labels_cleans_splits_and_rebuilds_from_its_cache(tmp_path, index_server, monkeypatch):
    url, seen = index_server
    monkeypatch.setattr(pypi_fetch.time, "sleep", lambda s: None)
    out, cache = tmp_path / "set", tmp_path / "cache"
    args = ["--index-url", url, "--sample", "100", "--cache", str(cache), "--out", str(out), "--min-class", "2",
            "--workers", "4"]
    assert build.main(args) == 0
    assert seen["/pypi/sci-3/json"] == 2 and seen["/pypi/gone/json"] == 1
    data = load_text_data(DataConfig(name="custom", path=str(out)), seed=0)
    assert data.label_names == ["Internet", "Scientific/Engineering"]
    texts = {t: data.label_names[y] for s in data.splits.values() for t, y in zip(s["text"], s["label"])}
    expected = {f"HTTP client number {i} Sends requests, variant {i}.": "Internet" for i in NET}
    expected |= {f"Solver {i} for equations Integrates ODEs, method {i}.": "Scientific/Engineering" for i in SCI}
    expected["Same text In two projects."] = "Internet"
    assert texts == expected
    source = {f"{d['info']['summary']} {d['info']['description']}": k for k, d in PROJECTS.items()}
    for split, rows in data.splits.items():
        assert {build.split_of(source[t]) for t in rows["text"]} == {split}
    card = (out / "README.md").read_text()
    assert "| Internet |" in card and "Games/Entertainment 1" in card and "identical text, conflicting labels 2" in card
    before = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    requests = sum(seen.values())
    assert build.main([*args, "--offline"]) == 0  # from the cache alone: nothing fetched, the same files
    assert sum(seen.values()) == requests
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == before
    card = (out / "README.md").read_text()
    floor = {"recipe": "r.yaml", "overrides": ["data.name=custom"], "summary": {"test_accuracy_mean": 0.5,
             "test_macro_f1_mean": 0.25}, "runs": [{"seed": 0, "train": 13, "validation": 2, "test": 2, "C": 0.3,
             "validation_accuracy": 0.75, "validation_accuracy_by_C": {"0.3": 0.75, "1.0": 0.5}}]}
    (tmp_path / "floor.json").write_text(json.dumps(floor))
    assert build.main(["--out", str(out), "--card-only", "--floor", str(tmp_path / "floor.json")]) == 0
    with_floor = (out / "README.md").read_text()
    assert "test accuracy **50.00**, macro-F1 **25.00**" in with_floor
    assert with_floor.replace(with_floor.split("## TF-IDF")[1].split("## Licence")[0], "") == \
        card.replace(card.split("## TF-IDF")[1].split("## Licence")[0], "")
    with pytest.raises(SystemExit):
        build.main(["--out", str(out)])  # building needs --cache
    assert normalise_name("Net.0") == "net-0"
