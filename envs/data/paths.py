"""Where data files are read from and where decoded arrays are cached.

Two separate folders on purpose: the data root holds the original distribution files and may be
read-only and shared between users (``../shared/data`` on the project's machines), while the
decode cache is private, disposable and always writable.
"""

from __future__ import annotations

import os
import pathlib

__all__ = [
    "ENV_DATA",
    "ENV_CACHE",
    "ENV_OFFLINE",
    "resolve_data_root",
    "cache_dir",
    "is_offline",
]

ENV_DATA = "RULEGYM_DATA"
"""Environment variable naming the data root (original files, may be read-only)."""

ENV_CACHE = "RULEGYM_CACHE"
"""Environment variable naming the folder for decoded ``.npy`` arrays."""

ENV_OFFLINE = "RULEGYM_OFFLINE"
"""Set to ``1`` to forbid any network access: a missing file raises at once."""


def user_cache_base() -> pathlib.Path:
    """``$XDG_CACHE_HOME`` when set (the freedesktop convention), else ``~/.cache``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Return the absolute data root.

    Precedence: the explicit ``root`` argument, else ``$RULEGYM_DATA``, else
    ``($XDG_CACHE_HOME or ~/.cache)/rulegym/data``. A relative path is taken relative to the
    current directory (CI sets ``RULEGYM_DATA=../shared/data`` from the repository root). The
    folder need not exist yet: it is created only when something is downloaded into it.
    """
    if root is not None:
        if os.fspath(root) == "":
            raise ValueError(
                "data root is an empty string; pass a folder path, or None to use "
                f"${ENV_DATA} or the user cache folder"
            )
        path = pathlib.Path(root)
    else:
        env = os.environ.get(ENV_DATA, "").strip()
        path = pathlib.Path(env) if env else user_cache_base() / "rulegym" / "data"
    # abspath also folds ".." so that messages show a clean path.
    return pathlib.Path(os.path.abspath(path.expanduser()))


def cache_dir() -> pathlib.Path:
    """Folder for decoded arrays: ``$RULEGYM_CACHE`` else ``(~/.cache)/rulegym/decoded``.

    Never inside the data root, which may be read-only or shared.
    """
    env = os.environ.get(ENV_CACHE, "").strip()
    path = pathlib.Path(env) if env else user_cache_base() / "rulegym" / "decoded"
    return pathlib.Path(os.path.abspath(path.expanduser()))


def is_offline() -> bool:
    """True when ``$RULEGYM_OFFLINE`` is set to a true value (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}
