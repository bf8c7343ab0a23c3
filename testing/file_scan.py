"""Scanning files for text, as deletion tests do: each file's bytes, and for .npz (zip)
archives each member's bytes too (they are compressed); strings in UTF-8 and numpy's UTF-32."""

from __future__ import annotations

import zipfile
from pathlib import Path


def blobs_of(path: Path) -> list[bytes]:
    """A file's bytes, plus each member's bytes if it is a zip (.npz) archive."""
    data = path.read_bytes()
    out = [data]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            out += [archive.read(name) for name in archive.namelist()]
    return out


def files_holding(root: Path, needles: dict[str, bytes]) -> list[str]:
    """``file: needle name`` for every file below ``root`` that holds one of ``needles``."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        for blob in blobs_of(path):
            found += [f"{path.relative_to(root)}: {name}" for name, needle in needles.items()
                      if needle in blob]
    return sorted(set(found))


def text_needles(text: str) -> dict[str, bytes]:
    return {"text (utf-8)": text.encode(), "text (utf-32)": text.encode("utf-32-le")}
