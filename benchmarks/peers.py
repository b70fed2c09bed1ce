"""restic and borg on the same images, for honest comparisons (skipped when not installed).

Each peer backs up `<dir>/disk.img`: the base image, then `incr_runs` times a copy with
another 1% changed, renamed into the same path (so restic/borg find their parent by
path, as a VM-image backup would). Borg runs twice: its default chunker, and fixed
4 MiB chunks with --sparse (its VM-image mode, the fastest peer).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from measure import Measured, Row, dir_size, evict_from_cache, run_measured


def available() -> dict[str, bool]:
    return {"restic": bool(shutil.which("restic")), "borg": bool(shutil.which("borg"))}


def _check(m: Measured, what: str) -> Measured:
    if m.returncode != 0:
        raise RuntimeError(f"{what} failed ({m.returncode}): {m.stderr.strip()[-500:]}")
    return m


def run_peer(
    name: str,
    work: Path,
    base: Path,
    change: Callable[[Path, int], None],
    size: int,
    incr_runs: int = 1,
) -> list[Row]:
    """Full, `incr_runs` incrementals (the row has their median) and a restore of the last.

    `change(path, step)` applies change step `step` to the image file at `path`."""
    repo = work / f"{name}-repo"
    data = work / f"{name}-data"
    out = work / f"{name}-restore"
    for p in (repo, data, out):
        shutil.rmtree(p, ignore_errors=True)
    data.mkdir(parents=True)
    out.mkdir(parents=True)
    img = data / "disk.img"
    _sparse_copy(base, img)
    env = dict(
        os.environ,
        RESTIC_PASSWORD="bench",
        BORG_PASSPHRASE="bench",
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
    )
    init, backup, restore = _commands(name, repo, data, out)
    _check(run_measured(init, env=env), f"{name} init")
    rows = []
    m = _check(run_measured(backup, env=env, cwd=str(data)), f"{name} full")
    rows.append(
        Row(name, "full", m.seconds, size / m.seconds / 2**20, m.peak_rss_mib, dir_size(str(repo)))
    )
    seconds, rss, growth = [], [], []
    for step in range(incr_runs):
        before = dir_size(str(repo))
        new = data / "disk.img.new"
        _sparse_copy(img, new)
        change(new, step)
        os.replace(new, img)
        m = _check(run_measured(backup, env=env, cwd=str(data)), f"{name} incremental")
        seconds.append(m.seconds)
        rss.append(m.peak_rss_mib)
        growth.append(dir_size(str(repo)) - before)
    rows.append(Row.repeated(name, "incr 1%", size, seconds, rss, growth))
    evict_from_cache(repo)
    m = _check(run_measured(restore, env=env, cwd=str(out)), f"{name} restore")
    rows.append(
        Row(
            name, "restore", m.seconds, size / m.seconds / 2**20, m.peak_rss_mib, dir_size(str(out))
        )
    )
    shutil.rmtree(out, ignore_errors=True)
    return rows


def _commands(name: str, repo: Path, data: Path, out: Path) -> tuple[list[str], ...]:
    if name == "restic":
        return (
            ["restic", "-q", "-r", str(repo), "init"],
            ["restic", "-q", "-r", str(repo), "backup", "disk.img"],
            ["restic", "-q", "-r", str(repo), "restore", "latest", "--target", str(out)],
        )
    chunker = ["--chunker-params", "fixed,4194304", "--sparse"] if name == "borg-fixed" else []
    arch = f"{repo}::{{now:%Y%m%dT%H%M%S.%f}}"
    return (
        ["borg", "init", "-e", "repokey", str(repo)],
        ["borg", "create", *chunker, arch, "disk.img"],
        [
            "bash",
            "-c",
            f"borg extract {'--sparse' if chunker else ''} "
            f"{repo}::$(borg list --last 1 --short {repo})",
        ],
    )


def _sparse_copy(src: Path, dest: Path) -> None:
    """Copy keeping holes (SEEK_DATA/SEEK_HOLE), so peers see the same hole map."""
    size = src.stat().st_size
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        fo.truncate(size)
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fi.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fi.fileno(), start, os.SEEK_HOLE)
            while start < end:
                n = min(8 << 20, end - start)
                os.pwrite(fo.fileno(), os.pread(fi.fileno(), n, start), start)
                start += n
            pos = end
