"""The Repository: the block store (hcbak/repo/blockstore.py) plus its restore points.

A point is one manifest object `points/<id>`, written once, after every block it needs
is durable (`save_point` flushes first): the commit of docs/format.md, "Crash safety".
Open a repository with `open_repo` (hcbak/repo/opening.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property

from hcbak.errors import IntegrityError, NotFoundError, RepoError, UsageError
from hcbak.repo.blockmap import ZERO_BLOCK, BlockMap
from hcbak.repo.blockstore import BlockStore
from hcbak.repo.codec import ENVELOPE
from hcbak.repo.locks import RepoLock
from hcbak.repo.pack import pack_key
from hcbak.repo.points import (
    MANIFEST_VERSION,
    POINT_MAGIC,
    Point,
    PointSummary,
    decode_header,
    decode_manifest,
    encode_manifest,
    new_point_id,
    summary_from_header,
)
from hcbak.repo.settings import CONFIG_KEY, SPARSE_MANIFESTS_FROM
from hcbak.repo.storage.base import ObjectMissingError
from hcbak.repo.storage.local import refuse_if_append_only
from hcbak.repo.summary_cache import SummaryCache

POINTS = "points/"
# The first read of a manifest for its header: one request on an object store for all
# but the largest headers (the block maps that follow are not needed for a listing).
SUMMARY_READ = 16 * 1024


class Repository(BlockStore):
    """An open repository. Use through `open_repo`; methods are thread safe."""

    lock: RepoLock | None = None  # the lease open_repo holds for it (None: no lock)
    unlocked_reason = ""  # why a read-only repository was opened without a lock
    summary_cache: SummaryCache | None = None  # this host's point summaries (state dir)

    @cached_property
    def unreadable_points(self) -> dict[str, str]:
        """Manifests list_points could not read (id -> why): left out of every listing
        so one damaged point hides no other; `repo verify` reports them (exit 6)."""
        return {}

    @property
    def location(self) -> str:
        """Where the repository is, for messages: a folder or a URL."""
        return self.store.location

    @property
    def manifest_version(self) -> int:
        """What this repository's format lets its new manifests be (settings.py)."""
        return MANIFEST_VERSION if self.config.version >= SPARSE_MANIFESTS_FROM else 1

    def new_point_id(self) -> str:
        return new_point_id()

    def save_point(self, point: Point) -> None:
        """The commit: flush all data, then write the manifest atomically (write-once)."""
        self.flush()
        self.check_not_lost(
            {bid for disk in point.disks for bid in disk.block_map.ids()}, f"point {point.id}"
        )
        data = encode_manifest(point, self.envelope, self.manifest_version)
        self._protect_point(point)
        if self.lock is not None:
            self.lock.check_held()  # a holder that lost its lease commits nothing
        if not self.store.put(POINTS + point.id, data, if_absent=True):
            raise RepoError(f"point {point.id} already exists")

    def _protect_point(self, point: Point) -> None:
        """Object Lock (S3 `immutable_days`): before the manifest is written (with its
        own retention), extend the retention of what the point needs - the packs of its
        blocks, older points' packs included, and `config` with the key material - to
        the point's. Never shortened. Index segments are not: `repo repair` rebuilds
        them from the packs."""
        protect = getattr(self.store, "protect", None)
        if protect is None or not getattr(self.store, "immutable_days", 0):
            return
        packs = set()
        for disk in point.disks:
            for bid in disk.block_map.ids():
                where = self.locate(bid)
                if where is not None:
                    packs.add(where.pack)
        keys = [CONFIG_KEY, *(pack_key(p) for p in sorted(packs))]
        protect(keys, self.store.retention_until())  # type: ignore[attr-defined]

    def unchanged_to_read_again(self, prev_map: BlockMap) -> list[int]:
        """Positions of the previous point's blocks an incremental must read again
        although they did not change: those whose only stored copy is recorded damaged,
        and, while an index segment is unreadable, those the index cannot find (that
        segment alone listed them). Kept as they are, the new point would not restore
        until `repo repair`; stored again, it restores now (and so do older points that
        share them)."""
        heal = set(prev_map.positions_of(self.set_aside_ids()))
        if self.index_incomplete:
            for i in range(len(prev_map)):
                block_id = prev_map.get(i)
                if block_id != ZERO_BLOCK and not self.has_block(block_id):
                    heal.add(i)
        return sorted(heal)

    def point_ids(self) -> list[str]:
        return [key.removeprefix(POINTS) for key in self.store.list(POINTS)]

    def read_summary(self, point_id: str) -> PointSummary:
        """Read only the manifest's first section (the JSON header), not its block maps.
        ObjectMissingError when the point is gone."""
        fixed = len(POINT_MAGIC) + ENVELOPE.size
        head = self.store.get_range(POINTS + point_id, 0, SUMMARY_READ)
        if len(head) >= fixed:  # else decode_header reports the truncation
            end = fixed + ENVELOPE.unpack_from(head, len(POINT_MAGIC))[4]
            if len(head) < end:  # a header longer than the first read (many disks)
                head += self.store.get_range(POINTS + point_id, len(head), end - len(head))
            head = head[:end]
        header, _ = decode_header(head, point_id, self.envelope)
        return summary_from_header(header)

    def list_points(self, vm: str | None = None, job: str | None = None) -> list[PointSummary]:
        """Points sorted by creation time; `vm` matches name or uuid. A damaged
        manifest is left out and named in `unreadable_points`."""
        out = []
        cache = self.summary_cache
        cached = cache.load() if cache is not None else {}
        known: dict[str, PointSummary] = {}
        for pid in self.point_ids():
            s = cached.get(pid)
            if s is None:
                try:
                    s = self.read_summary(pid)
                except ObjectMissingError:
                    continue  # forgotten meanwhile
                except IntegrityError as exc:
                    self.unreadable_points[pid] = exc.one_line()
                    continue
            known[pid] = s
            if vm is not None and vm not in (s.vm_name, s.vm_uuid):
                continue
            if job is not None and s.job != job:
                continue
            out.append(s)
        if cache is not None and known.keys() != cached.keys():
            cache.save(known)  # new points added, forgotten ones dropped
        return sorted(out, key=lambda s: (s.created, s.id))

    def load_point(self, point_id: str) -> Point:
        try:
            data = self.store.get(POINTS + point_id)
        except ObjectMissingError:
            raise NotFoundError(f"no restore point {point_id} in repository {self.location}")
        return decode_manifest(data, point_id, self.envelope)

    def resolve_point(self, spec: str) -> str:
        """A point id from an id, a unique id prefix, `VM@latest` or `VM@YYYY-MM-DD`."""
        if "@" in spec:
            return self._resolve_by_vm(spec)
        ids = self.point_ids()
        if spec in ids:
            return spec
        matches = [i for i in ids if i.startswith(spec.lower())] if len(spec) >= 4 else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"point prefix {spec!r} is ambiguous ({len(matches)} points)")
        if len(spec) < 4 and any(i.startswith(spec.lower()) for i in ids):
            raise UsageError(f"point prefix {spec!r} is too short: give at least 4 characters")
        raise NotFoundError(f"no restore point matches {spec!r}")

    def _resolve_by_vm(self, spec: str) -> str:
        vm, when = spec.rsplit("@", 1)
        points = self.list_points(vm=vm)
        if when != "latest":
            try:
                day = datetime.strptime(when, "%Y-%m-%d").date()
            except ValueError:
                raise UsageError(f"{spec!r}: use VM@latest or VM@YYYY-MM-DD")
            points = [p for p in points if p.created.astimezone(UTC).date() == day]
        if not points:
            raise NotFoundError(f"no restore point matches {spec!r}")
        return points[-1].id

    def forget_points(self, ids: list[str]) -> None:
        """Delete manifests; their data stays until `prune`. Every id is checked first
        (one listing), so an unknown id deletes nothing."""
        refuse_if_append_only(self.store, "forgetting points")
        known = set(self.point_ids())
        for pid in ids:
            if pid not in known:
                raise NotFoundError(f"no restore point {pid}")
        for pid in ids:
            self.store.delete(POINTS + pid)
