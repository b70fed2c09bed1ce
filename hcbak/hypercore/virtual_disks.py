"""Virtual disks (restore): stream an image up as a new disk, wait for its final name,
attach it to a VM."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from urllib.parse import quote

from hcbak.errors import NotFoundError, TransportError, UsageError
from hcbak.hypercore import tasks
from hcbak.hypercore.records import VirtualDisk
from hcbak.hypercore.replies import check_status, created_uuid, json_body
from hcbak.hypercore.session import ClientSession

UPLOAD_FORMATS = (".qcow2", ".vmdk", ".vhd", ".vhdx", ".img")


class VirtualDiskCalls(ClientSession):
    """The virtual-disk calls of `HyperCoreClient`."""

    # --- virtual disks (restore) ------------------------------------------------------
    def upload_virtual_disk(self, name: str, size: int, chunks: Iterable[bytes]) -> str:
        """Stream exactly `size` bytes as a new virtual disk; returns its uuid.

        `name` carries the format extension (.qcow2, .img, ...). The body is streamed
        with an exact Content-Length (the API rejects chunked encoding) and no temp file.
        """
        if not name.lower().endswith(UPLOAD_FORMATS):
            raise UsageError(f"upload name {name!r} lacks a format extension {UPLOAD_FORMATS}")
        body = SizedStream(chunks, size)
        resp = self.pool.send(
            "PUT",
            "/VirtualDisk/upload",
            params={"filename": name, "filesize": str(size)},
            data=body,
            headers={"Content-Type": "application/octet-stream"},
            idempotent=False,
        )
        check_status(resp, "PUT /VirtualDisk/upload", self.cluster.username)
        data = json_body(resp, "PUT /VirtualDisk/upload")
        result = data if isinstance(data, dict) else {}
        self.wait_task(result.get("taskTag"), what=f"upload of {name}")
        uuid = created_uuid(result, "PUT /VirtualDisk/upload")
        self._await_final_name(uuid)
        return uuid

    def _await_final_name(self, uuid: str) -> VirtualDisk:
        """Uploads are renamed uploading-<n> -> converting-<n> -> <n>; wait for <n>."""
        last: list[VirtualDisk] = []

        def final() -> VirtualDisk | None:
            last[:] = [self.get_virtual_disk(uuid)]
            return last[0] if last[0].is_final else None

        timeout = self.cluster.task_timeout
        found = tasks.poll_until(final, timeout, sleep=self._sleep, clock=self._clock)
        if found is None:
            raise TransportError(
                f"virtual disk {uuid} still named {last[0].name!r} after {timeout:g} s"
            )
        return found

    def list_virtual_disks(self) -> list[VirtualDisk]:
        return [VirtualDisk.from_api(x) for x in self._get_list("/VirtualDisk")]

    def get_virtual_disk(self, uuid: str) -> VirtualDisk:
        items = self._get_list(f"/VirtualDisk/{quote(uuid)}", missing_ok=True)
        if not items:
            raise NotFoundError(f"virtual disk {uuid} does not exist")
        return VirtualDisk.from_api(items[0])

    def attach_virtual_disk(
        self, vd_uuid: str, vm_uuid: str, type: str, capacity: int, slot: int
    ) -> str:
        """Attach an uploaded disk to a VM; returns the new block device uuid."""
        body = {
            # regenerateDiskID defaults to true and breaks booting (GRUB/BCD disk ids).
            "options": {"regenerateDiskID": False, "readOnly": False},
            "template": {
                "virDomainUUID": vm_uuid,
                "type": type,
                "capacity": int(capacity),
                "slot": int(slot),
            },
        }
        path = f"/VirtualDisk/{quote(vd_uuid)}/attach"
        result = self._mutate("POST", path, body, what=f"attach of virtual disk {vd_uuid}")
        return created_uuid(result, f"POST {path}")

    def delete_virtual_disk(self, uuid: str) -> None:
        self._delete(f"/VirtualDisk/{quote(uuid)}", what=f"delete virtual disk {uuid}")


class SizedStream:
    """An iterable request body with a known length.

    requests sends an iterable with `__len__` with that Content-Length and no chunked
    encoding. The byte count is checked while streaming: a producer that yields more
    or fewer bytes than announced is a bug, reported instead of sending a corrupt disk.
    """

    def __init__(self, chunks: Iterable[bytes], size: int) -> None:
        self._chunks = chunks
        self.size = int(size)
        self.sent = 0
        self.started = False

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        if self.started:
            raise TransportError("upload body can only be streamed once")
        self.started = True
        for chunk in self._chunks:
            if not chunk:
                continue
            self.sent += len(chunk)
            if self.sent > self.size:
                raise TransportError(
                    f"upload producer yielded more than the announced {self.size} bytes"
                )
            yield bytes(chunk)
        if self.sent != self.size:
            raise TransportError(
                f"upload producer yielded {self.sent} bytes, announced {self.size}"
            )
