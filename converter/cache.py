"""Converted models cached by source hash, converter version and options: each converts once.

Any change to what the converter writes must bump CONVERTER_VERSION, or stale folders are reused.
"""

from __future__ import annotations

import fcntl
import re
from pathlib import Path

from converter import CONVERTER_VERSION
from converter.convert import ConversionOptions, convert, source_digest
from converter.progress import Progress


def cache_folder_for(digest: str, source: Path, cache_root: Path, options: ConversionOptions) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.stem if source.is_file() else source.name)
    return cache_root / f"{stem}-{digest[:16]}-c{CONVERTER_VERSION}-{options.label()}"


def cached_conversion(
    source: Path,
    cache_root: Path,
    options: ConversionOptions = ConversionOptions(),
    progress: Progress = Progress(),
) -> Path:
    """The model folder for `source`, converting it first unless a finished one is cached.

    A lock file makes concurrent callers (a test run and a service, say) convert only once.
    """
    hashes = source_digest(source)
    folder = cache_folder_for(hashes[0], source, cache_root, options)
    if (folder / "manifest.json").is_file():
        return folder
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "manifest.json").is_file():
            convert(source, folder, options, force=True, progress=progress, source_hashes=hashes)
    return folder
