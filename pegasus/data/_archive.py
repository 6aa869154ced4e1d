"""Sequential reads of tar archives.

A .tar.gz only supports random access by decompressing from the start, so every reader
here streams the archive once ("r|") and keeps only the members it needs.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ._dataset import DatasetError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GZIP_MAGIC = b"\x1f\x8b"


def is_archive_name(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def iter_members(
    archive: Path, wanted: Callable[[str], bool]
) -> Iterator[tuple[str, tarfile.TarInfo, bytes | None]]:
    """Yield (name, member, contents) in archive order (.tar, or gzip-compressed).

    name has no leading "./" or trailing "/"; contents is read only for regular files
    whose name satisfies ``wanted`` and is None otherwise. Once every member has been
    yielded, the archive is checked to end cleanly.
    """
    try:
        with open(archive, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == _GZIP_MAGIC else raw
            raw.seek(0)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                name = None
                for member in tar:
                    name = member.name.removeprefix("./").rstrip("/")
                    data = None
                    if member.isfile() and wanted(name):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    yield name, member, data
                # tarfile stops without a word at the first corrupt header, so whatever follows
                # the last member must be the end-of-archive zeros. Reading to the end also
                # makes gzip check its CRC.
                while chunk := stream.read(1 << 20):
                    if chunk.strip(b"\0"):
                        raise DatasetError(
                            f"{archive}: expected the archive to end after member {name!r}, "
                            "found more data that is not a tar header (corrupt?)"
                        )
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(
            f"{archive}: expected a readable tar archive, got {type(e).__name__}: {e}"
        ) from e


def read_members(archive: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Contents of the regular files whose name satisfies ``wanted``, keyed by name."""
    return {name: data for name, _, data in iter_members(archive, wanted) if data is not None}


def iter_names(archive: Path) -> Iterator[str]:
    """Member names in archive order, without reading any contents."""
    for name, _, _ in iter_members(archive, lambda name: False):
        yield name
