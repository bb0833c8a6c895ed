"""Data sets that ship as Debian packages: fetched with ``apt-get download``, unpacked with
``dpkg-deb -x`` into lowbit's cache. Never installed system-wide (janeaustenr would pull R).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._cache import cache_dir

log = logging.getLogger(__name__)

SETUP_HINT = "run `make setup` (or python -m lowbit.setup_assets)"


@dataclass(frozen=True)
class DebAsset:
    """A Debian package unpacked into ``cache_dir("data", name)``; ``marker`` proves it."""

    name: str
    package: str
    marker: str  # a file inside the package, relative to its root

    @property
    def root(self) -> Path:
        return cache_dir("data") / self.name

    def ready(self) -> bool:
        return (self.root / self.marker).is_file()


JANEAUSTENR = DebAsset("janeaustenr", "r-cran-janeaustenr",
                       "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx")
FASHION_MNIST = DebAsset("fashion-mnist", "dataset-fashion-mnist",
                         "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
ASSETS = (JANEAUSTENR, FASHION_MNIST)


def asset_root(asset: DebAsset) -> Path:
    """The unpacked package's root folder, or FileNotFoundError saying how to get it."""
    if not asset.ready():
        raise FileNotFoundError(f"{asset.name} data not found under {asset.root} (Debian "
                                f"package {asset.package}): {SETUP_HINT}")
    return asset.root


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)


def _require(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise RuntimeError(f"`{tool}` not found: lowbit gets this data from the Debian package "
                           f"{package}. On Debian/Ubuntu install {tool}; elsewhere download "
                           f"the package's .deb by hand into {cache_dir('debs')}")


def download_deb(package: str) -> Path:
    """``apt-get download`` the package's .deb into ``cache_dir("debs")`` (once)."""
    debs = cache_dir("debs")
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    _require("apt-get", package)
    log.info("apt-get download %s", package)
    result = _run(["apt-get", "download", package], cwd=debs)
    if result.returncode != 0:  # package lists missing or stale on a fresh machine
        if os.geteuid() != 0:
            raise RuntimeError(f"apt-get download {package} failed:\n{result.stderr.strip()}\n"
                               "Try `sudo apt-get update`, then run setup again")
        log.info("apt-get update (download failed: %s)", result.stderr.strip()[-200:])
        update = _run(["apt-get", "update"])
        if update.returncode != 0:
            raise RuntimeError(f"apt-get update failed:\n{update.stderr.strip()}")
        result = _run(["apt-get", "download", package], cwd=debs)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get download {package} failed:\n{result.stderr.strip()}")
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise RuntimeError(f"apt-get download {package} left no .deb in {debs}")
    return found[-1]


def ensure_asset(asset: DebAsset) -> Path:
    """Download and unpack ``asset`` unless already there (atomic: temp folder + rename)."""
    if asset.ready():
        return asset.root
    deb = download_deb(asset.package)
    _require("dpkg-deb", asset.package)
    parent = asset.root.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{asset.name}.tmp-", dir=parent))
    try:
        log.info("unpacking %s into %s", deb.name, asset.root)
        result = _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        if result.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb} failed:\n{result.stderr.strip()}")
        if not (tmp / asset.marker).is_file():
            raise RuntimeError(f"{deb.name} has no {asset.marker}; is it the right package?")
        tmp.chmod(0o755)
        if asset.root.exists():
            shutil.rmtree(asset.root)  # an incomplete earlier copy (no marker)
        os.rename(tmp, asset.root)
    except OSError:
        if not asset.ready():  # not merely a concurrent setup finishing first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return asset.root
