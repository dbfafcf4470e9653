"""Per-visitor quotas on a shared server: upload size and disk per workspace.

Why here and not in the UI: the numbers come from :func:`engine.limits.limits` and the checks must be the
same for the browser, API clients and scripts. Each check raises :class:`~engine.limits.LimitError`, whose
message names the limit (its label in the "Limits on this server" panel), the value and what to do.
Messages name files and collections, never server paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.limits import LimitError, Limits, limits
from engine.workspace import Workspace

MB = 1024 * 1024


def upload_bytes_limit(lim: Limits | None = None) -> int:
    """The largest upload in bytes (what Gradio's ``max_file_size`` gets, and what handlers check)."""
    return (lim or limits()).max_upload_mb * MB


def check_upload(path: str | Path, name: str | None = None, lim: Limits | None = None) -> int:
    """Refuse a file larger than the upload limit (API clients can skip the browser's check); returns its size."""
    lim = lim or limits()
    path = Path(path)
    size = path.stat().st_size
    lim.check("max_upload_mb", round(size / MB, 1), f"The size of '{name or path.name}' in MB",
              "Upload a smaller file, or split it into several.")
    return size


def folder_bytes(folder: str | Path) -> int:
    """Bytes of every file under ``folder`` (0 when it does not exist); links are not followed, and a file with
    several hard links (a collection's versions share their kept originals that way) counts once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for root, _dirs, files in os.walk(folder):
        for file in files:
            try:
                stat = os.lstat(os.path.join(root, file))
            except OSError:  # removed while we walked
                continue
            if stat.st_nlink > 1:
                if (stat.st_dev, stat.st_ino) in seen:
                    continue
                seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


def check_room(ws: Workspace, adding_bytes: int, what: str, lim: Limits | None = None) -> None:
    """Refuse to add ``adding_bytes`` to a workspace that would then use more disk than its quota.

    ``what`` names what is being added ("'report.pdf'", "the index of 3 files") for the message.
    """
    lim = lim or limits()
    used = folder_bytes(ws.root)
    after_mb = round((used + max(0, adding_bytes)) / MB, 1)
    lim.check("max_workspace_mb", after_mb, f"Your workspace's disk use with {what} (MB)",
              f"It uses {used / MB:,.1f} MB now. Remove collections, files or reports you no longer need, "
              "or add less at once.")


def accept_upload(path: str | Path, ws: Workspace, name: str | None = None, lim: Limits | None = None) -> int:
    """Both checks an upload passes before it is copied into a workspace: its size, and the disk quota."""
    lim = lim or limits()
    name = name or Path(path).name
    size = check_upload(path, name, lim)
    check_room(ws, size, f"'{name}'", lim)
    return size


__all__ = ["MB", "LimitError", "accept_upload", "check_room", "check_upload", "folder_bytes",
           "upload_bytes_limit"]
