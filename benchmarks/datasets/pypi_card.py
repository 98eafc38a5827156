"""Write the dataset in Hub layout (parquet under ``data/``) and its README.md card from what was built."""
from __future__ import annotations

from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Value

SPLITS = ("train", "validation", "test")


def write_splits(out: Path, splits: dict[str, list[dict]], label_names: list[str]) -> None:
    features = Features({"text": Value("string"), "label": ClassLabel(names=label_names)})
    (out / "data").mkdir(parents=True, exist_ok=True)
    for old in (out / "data").glob("*.parquet"):
        old.unlink()
    index = {name: i for i, name in enumerate(label_names)}
    for split, rows in splits.items():
        ds = Dataset.from_dict({"text": [r["text"] for r in rows], "label": [index[r["label"]] for r in rows]},
                               features=features)
        ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))


def _counts_table(counts: dict[str, dict[str, int]], label_names: list[str]) -> list[str]:
    total = sum(sum(per.values()) for per in counts.values())
    lines = ["| label | " + " | ".join(SPLITS) + " | all | share |", "|---|" + "---:|" * (len(SPLITS) + 2)]
    order = sorted(label_names, key=lambda n: (-sum(counts[s].get(n, 0) for s in SPLITS), n))
    for name in order:
        row = [counts[s].get(name, 0) for s in SPLITS]
        lines.append(f"| {name} | " + " | ".join(f"{n:,}" for n in row)
                     + f" | {sum(row):,} | {100 * sum(row) / total:.1f}% |")
    sizes = [sum(counts[s].values()) for s in SPLITS]
    lines.append("| **all** | " + " | ".join(f"**{n:,}**" for n in sizes) + f" | **{total:,}** | 100% |")
    return lines


def _floor_lines(floor: dict | None) -> list[str]:
    if floor is None:
        return ["Not measured for this build (pass `--floor` with a `benchmarks/tfidf_floor.py` JSON)."]
    s = floor["summary"]
    runs = floor["runs"]
    return [f"Word 1–2-gram TF-IDF + linear SVM, C chosen on validation from "
            f"{sorted(float(c) for c in runs[0]['validation_accuracy_by_C'])} (`benchmarks/tfidf_floor.py`, "
            f"{floor['recipe']} {' '.join(floor['overrides'])}, seeds {[r['seed'] for r in runs]}; "
            f"train {runs[0]['train']:,} / validation {runs[0]['validation']:,} / test {runs[0]['test']:,}):",
            "",
            f"- test accuracy **{100 * s['test_accuracy_mean']:.2f}**, macro-F1 **{100 * s['test_macro_f1_mean']:.2f}** "
            f"(C = {runs[0]['C']}, validation accuracy {100 * runs[0]['validation_accuracy']:.2f}; the splits are "
            "the source's own, so every seed scores the same model)."]


def write_card(out: Path, info: dict, floor: dict | None) -> None:
    args, counts, names = info["settings"], info["counts"], info["label_names"]
    dropped = ", ".join(f"{why} {n:,}" for why, n in sorted(info["dropped"].items(), key=lambda kv: -kv[1]))
    rare = ", ".join(f"{name} {n}" for name, n in sorted(info["rare"].items(), key=lambda kv: -kv[1])) or "none"
    capped = ", ".join(f"{name} {n:,} before the cut" for name, n in info["capped"].items()) or "none"
    lines = [
        "---", "license: other", "task_categories:", "- text-classification", "language:", "- en", "- multilingual",
        "pretty_name: Python package topics", "configs:", "- config_name: default", "  data_files:",
        *[f"  - split: {s}\n    path: data/{s}-00000-of-00001.parquet" for s in SPLITS], "---", "",
        "# pypi_topics — Python package descriptions labelled by topic", "",
        f"Real package descriptions from the Python package index, labelled with the one `Topic ::` trove "
        f"classifier family their authors chose: **{len(names)} unbalanced classes**, "
        f"{sum(sum(per.values()) for per in counts.values()):,} texts. Columns `text` (string) and `label` (ClassLabel with "
        "the family names). Built for evaluating text classifiers on a set no setting was tuned on.", "",
        "## Counts", "", *_counts_table(counts, names), "",
        "## How it was built", "",
        f"Built on {info['date']} with", "", "```bash", info["command"], "```", "",
        f"1. **Names.** The index's Simple API root listed {info['index_names']:,} projects (cached with the "
        f"fetch); the first {info['sampled']:,} of a permutation of the sorted names seeded with {args['seed']} "
        f"were sampled and {info['fetched']:,} answered (the rest failed every retry).",
        "2. **Metadata.** Each project's JSON metadata for its latest release: summary, long description, "
        "trove classifiers.",
        "3. **Label.** Kept when the classifiers name exactly one second-level `Topic :: X` family (any depth "
        "below it counts as X); X is the label. Projects with several families are dropped, not split. "
        f"Families with fewer than {args['min_class']} texts after cleaning were dropped: {rare}. Families with "
        f"more than {args['max_class']:,} were cut to {args['max_class']:,} (the projects with the smallest "
        f"SHA-256 of \"cap:\" + normalised name, a hash independent of the split's), for size and balance: "
        f"{capped}.",
        f"4. **Text.** summary + \" \" + the first {args['desc_chars']} characters (cut at a word boundary) of "
        "the long description after cleaning (`benchmarks/datasets/pypi_markup.py`): fenced code, HTML "
        "comments/`<pre>`/`<code>`, interactive sessions, reST explicit markup with its indented body (directives "
        "such as images, badges and code blocks, comments, link targets, substitution definitions; admonitions "
        "keep their words), reST literal blocks after a `::` marker (the marker itself reads `:`), Markdown "
        "reference definitions, heading underlines, rules, table borders and every line holding an `A :: B` list "
        "(so classifiers quoted in a README never reach the text) are dropped; Markdown/reST links, references "
        "and roles keep their text, images and badges go, HTML tags are removed and entities decoded, Markdown "
        "escapes and emphasis marks go, web addresses (bare domain names with a common top-level domain too) "
        "become `<url>` and e-mail addresses `<email>` (plain, in angle brackets or mailto links, or spelled "
        "out: `name [at] host [dot] org`, `name AT host DOT org`, `first.last at host.org`), whitespace is "
        "collapsed; the summary gets the same inline cleaning; a description opening with the summary does not "
        "repeat it; `UNKNOWN`-style placeholders count as empty. The "
        "classifiers themselves are never part of the text.",
        f"5. **Filter.** Texts under {args['min_chars']} characters are dropped; identical texts are kept once "
        "(the first project by normalised name), or dropped entirely when their projects disagree on the label.",
        "6. **Split.** 80/10/10 train/validation/test by the SHA-256 of the project's normalised name (PEP 503) "
        "modulo 10 (0–7 train, 8 validation, 9 test): a project lands in one split whatever its version. Rows "
        "are sorted by normalised name within each split.", "",
        "`build_info.json` holds the numbers this card is written from.", "",
        f"Dropped on the way: {dropped}.", "",
        "Descriptions are written by package authors: most are English, some are in other languages; some are "
        "terse or templated. Labels are the authors' own choice of classifier, so they are noisy (a web "
        "scraper may be filed under Internet or Software Development).", "",
        "## TF-IDF + linear floor", "", *_floor_lines(floor), "",
        "## Licence", "",
        "The package metadata (summaries, descriptions, classifiers) is published by each package's authors "
        "under their package's own licence; this set redistributes short excerpts of it for research "
        "evaluation of text classifiers only. Use it under the original licences; it carries no licence of "
        "its own.", "",
    ]
    (out / "README.md").write_text("\n".join(lines))
