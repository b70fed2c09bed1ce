"""hcbak/repo/storage/s3.py on a real Ceph RGW: multipart in bounded memory, retries,
timeouts and the one-line errors of every way an endpoint can refuse or vanish.

The shared contract (get/put/if_absent/list/spool...) runs in
tests/repo/test_storage_contract.py; these are the S3-only promises. Faults come from a
real TCP proxy in front of the gateway (s3_faults.py), not from a mocked client.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hcbak.config.s3_target import (
    S3Keys,
    S3Target,
    parse_keys,
    parse_s3_target,
)
from hcbak.errors import RepoError, RepoLocationError, SecretError

from .s3_faults import FaultProxy, closed_port

MiB = 1024 * 1024


def make_store(bucket: Any, tmp_path: Path, prefix: str = "repo", **options: Any) -> Any:
    from hcbak.repo.storage.s3 import S3Options, S3Store

    options.setdefault("endpoint", bucket.endpoint)
    options.setdefault(
        "keys", S3Keys(bucket.env["AWS_ACCESS_KEY_ID"], bucket.env["AWS_SECRET_ACCESS_KEY"])
    )
    options.setdefault("region", "us-east-1")
    options.setdefault("spool_dir", tmp_path / "spool")
    return S3Store(S3Target(bucket.name, prefix), S3Options(**options))


@pytest.fixture
def proxy(s3_bucket: Any) -> Iterator[FaultProxy]:
    fault = FaultProxy(s3_bucket.endpoint)
    yield fault
    fault.close()


# --- big objects ------------------------------------------------------------------------
def test_a_big_spool_goes_up_in_parallel_parts_with_bounded_memory(
    s3_bucket: Any, tmp_path: Path
) -> None:
    from hcbak.repo.storage import s3 as s3_module

    store = make_store(s3_bucket, tmp_path, upload_parallel=3)
    data = os.urandom(MiB) * 41  # 41 MiB: 6 parts of 8 MiB (the last 1 MiB)
    spool = store.spool("packs/")
    for offset in range(0, len(data), 4 * MiB):
        spool.write([data[offset : offset + 4 * MiB]])
    active, most = 0, 0
    lock = threading.Lock()
    real_upload_part = store._upload_part

    def counting(*args: Any) -> Any:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        try:
            time.sleep(0.05)  # keep each part in flight long enough to overlap
            return real_upload_part(*args)
        finally:
            with lock:
                active -= 1

    store._upload_part = counting
    tracemalloc.start()
    try:
        assert store.commit_spool(spool, "packs/ab/big") is True
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="repo/packs/ab/big")
    assert head["ETag"].strip('"').endswith("-6")  # a multipart upload of 6 parts
    assert most == 3  # upload_parallel parts at once, never more
    # memory: the parts in flight (and their copies), never the whole 41 MiB object
    assert peak < (3 + 1) * s3_module.PART_SIZE + 4 * MiB, peak
    assert store.get("packs/ab/big") == data
    assert not spool.path.exists()
    assert s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads") is None


def test_a_failed_part_aborts_the_upload_and_leaves_no_object(
    s3_bucket: Any, tmp_path: Path
) -> None:
    store = make_store(s3_bucket, tmp_path, upload_parallel=2)
    spool = store.spool("packs/")
    spool.write([os.urandom(MiB) * 20])
    real_upload_part = store._upload_part

    def failing(path: Path, key: str, upload_id: str, number: int, *rest: Any) -> Any:
        if number == 2:
            raise RepoError("part 2 lost")
        return real_upload_part(path, key, upload_id, number, *rest)

    store._upload_part = failing
    with pytest.raises(RepoError, match="part 2 lost"):
        store.commit_spool(spool, "packs/cd/big")
    assert store.size("packs/cd/big") is None
    assert s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads") is None
    assert not spool.path.exists()


def test_a_big_spool_whose_key_exists_sends_no_part_and_leaves_no_upload(
    s3_bucket: Any, tmp_path: Path
) -> None:
    """A pack already in the bucket (a content address: the same bytes) is not sent
    again: no part reaches the gateway, the object is untouched, no upload is left."""
    store = make_store(s3_bucket, tmp_path, upload_parallel=2)
    data = os.urandom(MiB) * 20
    first = store.spool("packs/")
    first.write([data])
    assert store.commit_spool(first, "packs/ee/big") is True
    version = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="repo/packs/ee/big")
    sent: list[int] = []
    real_call = store._call

    def counting(what: str, key: Any, method: str, **kwargs: Any) -> Any:
        if method in ("upload_part", "create_multipart_upload"):
            sent.append(kwargs.get("PartNumber", 0))
        return real_call(what, key, method, **kwargs)

    store._call = counting
    again = store.spool("packs/")
    again.write([data])
    assert store.commit_spool(again, "packs/ee/big") is False
    assert sent == []
    assert not again.path.exists()
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="repo/packs/ee/big")
    assert head["ETag"] == version["ETag"] and head["LastModified"] == version["LastModified"]
    assert s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads") is None


def test_remove_temp_aborts_the_upload_of_a_killed_writer(s3_bucket: Any, tmp_path: Path) -> None:
    store = make_store(s3_bucket, tmp_path)
    client, name = s3_bucket.client, s3_bucket.name
    upload = client.create_multipart_upload(Bucket=name, Key="repo/packs/ef/half")
    client.upload_part(Bucket=name, Key="repo/packs/ef/half", UploadId=upload["UploadId"],
                       PartNumber=1, Body=b"x" * (5 * MiB))  # fmt: skip
    other = client.create_multipart_upload(Bucket=name, Key="other-repo/packs/ef/half")
    assert store.remove_temp() == 1
    uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [other["UploadId"]]  # not our prefix: kept
    assert list(store.list("")) == []


# --- retries and timeouts ---------------------------------------------------------------
def test_throttling_and_resets_are_retried_with_backoff(
    s3_bucket: Any, tmp_path: Path, proxy: FaultProxy
) -> None:
    store = make_store(s3_bucket, tmp_path, endpoint=proxy.url, max_attempts=5)
    proxy.fail_next, proxy.reset_next = 2, 1
    assert store.put("points/p", b"manifest") is True
    assert (proxy.failed, proxy.reset) == (2, 1)  # three failures, then it went through
    proxy.fail_next = 1  # a new client (its pooled connection is a new one)
    fresh = make_store(s3_bucket, tmp_path, endpoint=proxy.url, max_attempts=5)
    assert fresh.get("points/p") == b"manifest"
    assert proxy.failed == 3


def test_a_retried_conditional_put_whose_answer_was_lost_is_still_ours(
    s3_bucket: Any, tmp_path: Path, proxy: FaultProxy
) -> None:
    """The first PUT lands but its answer is lost; the retry then gets 412: the lock
    object holds our own bytes, so the write was ours (else a lock would be lost)."""
    store = make_store(s3_bucket, tmp_path, endpoint=proxy.url, max_attempts=3)
    proxy.lose_answer_next = 1
    assert store.put("locks/mine", b"lease of this run", if_absent=True) is True
    assert proxy.lost == 1
    assert store.get("locks/mine") == b"lease of this run"
    assert store.put("locks/mine", b"another run", if_absent=True) is False


def test_replace_is_a_compare_and_swap_with_the_unquoted_etag(
    s3_bucket: Any, tmp_path: Path
) -> None:
    """If-Match with S3's quoted ETag always gets 412 on Ceph: replace strips it."""
    store = make_store(s3_bucket, tmp_path)
    store.put("locks/l", b"A")
    assert store.replace("locks/l", b"A", b"B") is True
    assert store.replace("locks/l", b"A", b"C") is False  # changed meanwhile: kept
    assert store.get("locks/l") == b"B"
    store.delete("locks/l")
    assert store.replace("locks/l", b"B", b"D") is False  # removed: not recreated
    assert store.size("locks/l") is None


def test_a_lease_renewal_never_recreates_a_lease_removed_meanwhile(
    s3_bucket: Any, tmp_path: Path, proxy: FaultProxy
) -> None:
    """Another host removes the lease (judged stale, unlock --force) between the
    renewal's read and its write: the write must not bring it back."""
    from hcbak.errors import LockedError
    from hcbak.repo.locks import RepoLock

    store = make_store(s3_bucket, tmp_path, endpoint=proxy.url)
    lock = RepoLock(store, "shared", command="test")
    lock.acquire()
    try:
        proxy.hold = ("PUT ", "/locks/")  # the renewal's write waits on the wire
        renewal = threading.Thread(target=lock._renew)
        renewal.start()
        assert proxy.held.wait(30)
        s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=f"repo/{lock.key}")
        proxy.release.set()
        renewal.join(30)
        assert store.size(lock.key) is None  # not recreated
        with pytest.raises(LockedError, match="removed or replaced"):
            lock.check_held()
    finally:
        lock.release()


def test_without_retries_the_same_throttling_fails(
    s3_bucket: Any, tmp_path: Path, proxy: FaultProxy
) -> None:
    store = make_store(s3_bucket, tmp_path, endpoint=proxy.url, max_attempts=1)
    proxy.fail_next = 1
    with pytest.raises(RepoError, match=r"cannot write .*SlowDown"):
        store.put("points/p", b"manifest")


def test_a_hanging_endpoint_fails_in_bounded_time(
    s3_bucket: Any, tmp_path: Path, proxy: FaultProxy
) -> None:
    store = make_store(
        s3_bucket, tmp_path, endpoint=proxy.url, read_timeout=1, connect_timeout=1, max_attempts=2
    )
    proxy.hang = True
    started = time.monotonic()
    with pytest.raises(RepoError) as caught:
        store.get("config")
    assert time.monotonic() - started < 15
    assert "did not answer in time" in caught.value.one_line()
    assert "\n" not in caught.value.one_line()


def test_an_endpoint_that_went_away_is_unreachable_not_a_traceback(
    s3_bucket: Any, tmp_path: Path
) -> None:
    store = make_store(s3_bucket, tmp_path, endpoint=f"http://127.0.0.1:{closed_port()}",
                       max_attempts=2)  # fmt: skip
    with pytest.raises(RepoError, match="is unreachable"):
        store.size("config")


# --- refusals: keys, bucket, TLS --------------------------------------------------------
def test_wrong_keys_are_named_and_the_secret_is_not_shown(s3_bucket: Any, tmp_path: Path) -> None:
    store = make_store(s3_bucket, tmp_path, keys=S3Keys("AKIAWRONG", "not-the-secret-123"))
    with pytest.raises(RepoError) as caught:
        store.get("config")
    line = caught.value.one_line()
    assert "refused the S3 credentials" in line
    assert "not-the-secret-123" not in line
    real_key = make_store(s3_bucket, tmp_path).options.keys.access_key_id
    bad_secret = make_store(s3_bucket, tmp_path, keys=S3Keys(real_key, "wrong-secret"))
    with pytest.raises(RepoError, match="refused the S3 credentials"):
        bad_secret.put("config", b"x")


def test_a_clock_the_server_rejects_is_named(
    s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This host's clock one hour fast (the signing time only: the test cannot move the
    machine's clock); the rejection (RequestTimeTooSkewed) is the gateway's own."""
    import datetime as dt

    import botocore.auth

    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda *a, **k: real(*a, **k) + dt.timedelta(hours=1)
    )
    store = make_store(s3_bucket, tmp_path, max_attempts=1)
    with pytest.raises(RepoError) as caught:
        store.put("points/p", b"x")
    assert "rejects this host's clock (RequestTimeTooSkewed)" in caught.value.one_line()
    assert "NTP" in caught.value.one_line()


def test_a_missing_bucket_says_so(s3_bucket: Any, tmp_path: Path) -> None:
    from hcbak.repo.storage.s3 import S3Options, S3Store

    good = make_store(s3_bucket, tmp_path)
    missing = S3Store(S3Target("no-such-bucket-here"), good.options)
    with pytest.raises(RepoError, match="bucket no-such-bucket-here does not exist"):
        missing.get("config")
    with pytest.raises(RepoLocationError, match="does not exist"):
        missing.create()
    assert isinstance(missing.options, S3Options)


def test_tls_to_a_plain_http_endpoint_is_a_tls_error(s3_bucket: Any, tmp_path: Path) -> None:
    https = s3_bucket.endpoint.replace("http://", "https://")
    store = make_store(s3_bucket, tmp_path, endpoint=https, max_attempts=1)
    with pytest.raises(RepoError, match="TLS error talking to https://"):
        store.get("config")


def test_create_refuses_a_prefix_with_foreign_objects(s3_bucket: Any, tmp_path: Path) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="repo/notes.txt", Body=b"mine")
    with pytest.raises(RepoLocationError, match="not empty"):
        make_store(s3_bucket, tmp_path).create()
    make_store(s3_bucket, tmp_path, prefix="repo2").create()  # a sibling prefix is fine


def test_no_credentials_at_all_is_a_config_error(
    s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = make_store(s3_bucket, tmp_path, keys=None)
    with pytest.raises(SecretError, match="no S3 credentials"):
        store.get("config")


# --- pure parsing -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("backups", "backups", ""),
        ("backups/hcbak/site1/", "backups", "hcbak/site1"),
        ("s3://my.bucket-1/a", "my.bucket-1", "a"),
    ],
)
def test_s3_targets_parse(text: str, bucket: str, prefix: str) -> None:
    target = parse_s3_target(text)
    assert (target.bucket, target.prefix) == (bucket, prefix)
    assert parse_s3_target(target.location) == target


@pytest.mark.parametrize("text", ["", "ab", "Upper", "-x-", "a..b", "10.0.0.1", "ok/../x", "ok/.t"])
def test_bad_s3_targets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_target(text)


def test_credentials_texts_parse_and_never_echo_the_secret() -> None:
    assert parse_keys("AKID:se/cr+et\n") == S3Keys("AKID", "se/cr+et")
    assert parse_keys("AKID\nse:cret") == S3Keys("AKID", "se:cret")
    doc = '{"Version": 1, "AccessKeyId": "AKID", "SecretAccessKey": "s", "SessionToken": "t"}'
    assert parse_keys(doc) == S3Keys("AKID", "s", "t")
    assert "s3cr3t" not in repr(parse_keys("AKID:s3cr3t"))
    for bad in ("just-one-word-s3cr3t", '{"AccessKeyId": "s3cr3t"}', "{s3cr3t"):
        with pytest.raises(ValueError) as caught:
            parse_keys(bad)
        assert "s3cr3t" not in str(caught.value)
