"""Getting a verified data file onto disk: find it, else download it, else explain.

Rules that protect what is already on disk:

* downloads stream into a temp file in the destination folder and are verified there; only a
  verified file is moved into place, with ``os.replace`` (atomic on one file system). A failed or
  mismatching download leaves nothing under the real name;
* an existing file is never deleted or overwritten: if it fails its checksum, the user is told to
  delete it (it might be the only copy of something);
* members of an archive (EMNIST's ``gzip.zip``) are extracted the same way, one at a time, and
  their sha256 is recorded in a manifest next to them so that later runs can verify them without
  the archive.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile

from .digests import hash_file, verify_file
from .errors import ChecksumError, CorruptDataError, DataError, MissingDataError
from .paths import ENV_DATA, ENV_OFFLINE, is_offline, resolve_data_root
from .sources import SOURCES, Source, get_source

__all__ = ["ensure_file", "download_file", "MANIFEST_NAME", "DOWNLOAD_TIMEOUT_S"]

DOWNLOAD_TIMEOUT_S = 30.0
MANIFEST_NAME = ".manifest.json"
_CHUNK = 1 << 20
_MANIFEST_LOCK = threading.Lock()


def _where_to_put(source: Source, path: pathlib.Path, root: pathlib.Path) -> str:
    return (f"Put the file at {path}, or point {ENV_DATA} (or the root= argument) at a folder "
            f"that holds {source.relpath} (current data root: {root}).")


def _missing(source: Source, path: pathlib.Path, root: pathlib.Path, why: str) -> MissingDataError:
    if source.urls:
        fetch = f"Download it from {' or '.join(source.urls)}."
    elif source.archive:
        arch = SOURCES.get(source.archive)
        urls = " or ".join(arch.urls) if arch and arch.urls else "its official source"
        fetch = (f"It is a member of the {source.dataset} archive {source.archive} "
                 f"(official URL: {urls}); download that archive to {root / source.archive} and "
                 "it is extracted automatically, or extract the member yourself.")
    else:
        fetch = "No download URL is known for it."
    return MissingDataError(
        f"{source.dataset} file {source.filename} is missing: expected at {path}. {why} {fetch} "
        f"{_where_to_put(source, path, root)}",
        path=path,
    )


def _offline_note() -> str:
    return f"{ENV_OFFLINE}=1 is set, so no download was attempted."


# ------------------------------------------------------------------------------ manifest

def _manifest_path(folder: pathlib.Path) -> pathlib.Path:
    return folder / MANIFEST_NAME


def read_manifest(folder: pathlib.Path) -> dict[str, dict]:
    """Entries ``{file name: {"sha256": ..., "size": ..., "from": ...}}``; {} when absent/unreadable."""
    try:
        data = json.loads(_manifest_path(folder).read_text(encoding="utf-8"))
        files = data.get("files", {})
        return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}
    except (OSError, ValueError, AttributeError):
        return {}


def _record_in_manifest(folder: pathlib.Path, name: str, entry: dict) -> None:
    with _MANIFEST_LOCK:
        files = read_manifest(folder)
        files[name] = entry
        payload = {
            "about": "sha256 of files extracted by rulegym from an archive that matched its "
                     "published checksum; they are trusted on that basis.",
            "files": dict(sorted(files.items())),
        }
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh, indent=1)
            _make_readable(tmp)
            os.replace(tmp, _manifest_path(folder))
        except BaseException:
            _unlink_quietly(pathlib.Path(tmp))
            raise


# ------------------------------------------------------------------------------ downloads

def _make_readable(path: str | os.PathLike[str]) -> None:
    """Give a temp file the mode a plain ``open`` would (0666 less the umask): ``mkstemp`` makes
    it 0600, and ``os.replace`` keeps that, so other users of a shared data root could not read
    what one of them downloaded."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask: read where Linux shows it, since setting it to read it back (the
    only portable way) would briefly change it for every thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _unlink_quietly(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _new_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    """The folders, innermost first, that making ``folder`` would create."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[pathlib.Path]) -> None:
    """Remove the folders a failed fetch created (innermost first), as long as they are empty:
    a fetch that wrote nothing leaves the data root as it found it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _make_temp(dest: pathlib.Path, source: Source, root: pathlib.Path) -> pathlib.Path:
    """A temp file next to ``dest`` (same file system, so ``os.replace`` is atomic)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        _make_readable(tmp)
        return pathlib.Path(tmp)
    except OSError as exc:
        raise _missing(source, dest, root,
                       f"It cannot be downloaded because the data root is not writable "
                       f"({dest.parent}: {exc.strerror or exc}).") from exc


def _stream(url: str, tmp: pathlib.Path) -> None:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
        total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
        got = 0
        while chunk := resp.read(_CHUNK):
            out.write(chunk)
            got += len(chunk)
        if total is not None and total.isdigit() and got != int(total):
            raise OSError(f"connection closed after {got} of {total} bytes")


def download_file(source: Source, dest: pathlib.Path, root: pathlib.Path) -> str:
    """Download ``source`` to ``dest`` (which must not exist) and return its verified digest tag.

    Tries each URL in order. Raises :class:`MissingDataError` when offline, when the folder is
    not writable or when every URL failed, and :class:`ChecksumError` when a download arrived but
    matched no checksum (and no other URL gave a good copy).
    """
    if is_offline():
        raise _missing(source, dest, root, _offline_note())
    if not source.urls:
        raise _missing(source, dest, root, "It has no download URL.")
    created = _new_folders(dest.parent)
    tmp = _make_temp(dest, source, root)
    failures: list[str] = []
    mismatch: ChecksumError | None = None
    try:
        for url in source.urls:
            print(f"rulegym: downloading {url} -> {dest}", file=sys.stderr, flush=True)
            try:
                _stream(url, tmp)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
                continue
            try:
                tag = verify_file(tmp, source, label=f"{source.relpath} (downloaded from {url})")
            except ChecksumError as exc:
                mismatch = exc
                failures.append(f"{url}: checksum mismatch")
                continue
            os.replace(tmp, dest)
            return tag
    finally:
        _unlink_quietly(tmp)
        if not dest.exists():
            _remove_if_empty(created)
    if mismatch is not None:
        raise ChecksumError(
            f"{source.dataset} file {source.filename}: the download did not match the published "
            f"checksum, so nothing was written to {dest}. Details: {mismatch} "
            f"Tried: {'; '.join(failures)}. Try again later or fetch the file by hand.",
            path=dest,
        )
    raise _missing(source, dest, root,
                   f"Downloading it failed (tried {'; '.join(failures)}); check the network "
                   f"connection, or set {ENV_OFFLINE}=1 to skip downloads.")


# ------------------------------------------------------------------------------ archives

def _extract_member(source: Source, dest: pathlib.Path, root: pathlib.Path) -> str:
    """Extract ``source`` from its (verified, downloaded if needed) archive; return digest tag."""
    archive_src = get_source(source.archive)  # type: ignore[arg-type]
    archive_path = root / archive_src.relpath
    if not archive_path.is_file() and is_offline():
        raise _missing(source, dest, root, _offline_note())
    try:
        archive_path, archive_tag = ensure_file(archive_src.relpath, root)
    except MissingDataError as exc:
        raise _missing(source, dest, root,
                       f"Its archive {archive_src.relpath} could not be obtained: {exc}") from exc
    tmp = _make_temp(dest, source, root)
    try:
        try:
            with zipfile.ZipFile(archive_path) as zf:
                members = [i for i in zf.infolist() if i.filename.rsplit("/", 1)[-1] == dest.name]
                if not members:
                    raise CorruptDataError(
                        f"{archive_src.relpath} has no member named {dest.name} at {archive_path}. "
                        f"Check the EMNIST variant/split names, or delete the archive and download "
                        f"it again.", path=archive_path)
                with zf.open(members[0]) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise CorruptDataError(
                f"{archive_src.relpath}: not a readable zip archive ({exc}) at {archive_path}. "
                f"Delete it and download it again from {' or '.join(archive_src.urls)}.",
                path=archive_path) from exc
        except OSError as exc:
            raise MissingDataError(
                f"{source.dataset} file {source.filename}: could not write it to {dest} "
                f"({exc}). Make the data root writable or extract the member by hand.",
                path=dest) from exc
        sha = hash_file(tmp, ("sha256",))["sha256"]
        if source.sha256 and sha not in source.sha256:
            raise ChecksumError(
                f"{source.dataset} file {source.filename}: extracted from {archive_path} but its "
                f"sha256 {sha} is not the published {' or '.join(source.sha256)}; nothing was "
                f"written to {dest}. Delete {archive_path} and download it again.", path=dest)
        os.replace(tmp, dest)
    finally:
        _unlink_quietly(tmp)
    try:
        _record_in_manifest(dest.parent, dest.name, {
            "sha256": sha, "size": dest.stat().st_size,
            "from": f"{archive_src.relpath} ({archive_tag})"})
    except OSError:
        # The member is in place and verified now; without an entry, a member that has no
        # published sha256 is refused next time (ChecksumError says to delete it and re-extract).
        pass
    return f"sha256:{sha}"


# ------------------------------------------------------------------------------ entry point

def ensure_file(relpath: str, root: str | os.PathLike[str] | None = None) -> tuple[pathlib.Path, str]:
    """Return ``(absolute path, verified digest tag)`` of the data file ``relpath``.

    Downloads (or extracts from its archive) a missing file when allowed; verifies every file
    before returning it. See the module docstring for what is guaranteed on failure.
    """
    source = get_source(relpath)
    root_path = resolve_data_root(root)
    path = root_path / relpath
    if path.exists() and not path.is_file():
        raise DataError(f"{source.dataset}: {path} exists but is not a regular file. "
                        f"Move it away and put the file {source.filename} there.", path=path)
    if not path.is_file():
        if source.archive:
            return path, _extract_member(source, path, root_path)
        return path, download_file(source, path, root_path)
    extra: tuple[str, ...] = ()
    note = ""
    if source.archive:
        entry = read_manifest(path.parent).get(path.name)
        extra = (entry["sha256"],) if entry else ()
        if not source.sha256 and not extra:
            note = (f"No sha256 is published for this member of {source.archive}, and it has no "
                    f"entry in {path.parent / MANIFEST_NAME}, which rulegym writes when it extracts "
                    f"members from an archive that matched its published checksum. Delete the file "
                    f"and let rulegym extract it from {source.archive}.")
    return path, verify_file(path, source, extra_sha256=extra, extra_note=note)
