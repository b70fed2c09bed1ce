"""Fingerprint parsing and per-node trust resolution."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcbak.config import TLSConfig, normalize_fingerprint
from hcbak.hypercore.connection import tls_context
from hcbak.hypercore.tls import base_url, split_address, trust_for

FP = "ab" * 32


@given(st.binary(min_size=32, max_size=32), st.booleans(), st.booleans())
def test_fingerprint_forms_normalize_to_lower_hex(raw: bytes, colons: bool, upper: bool) -> None:
    hexed = raw.hex()
    text = ":".join(hexed[i : i + 2] for i in range(0, 64, 2)) if colons else hexed
    text = text.upper() if upper else text
    assert normalize_fingerprint(text) == hexed
    # as people paste them: openssl's bytes with spaces, a sha256/ or SHA256: prefix
    assert normalize_fingerprint(f"sha256/{text}") == hexed
    assert normalize_fingerprint(f"SHA256:{text.replace(':', ' ')}") == hexed


@pytest.mark.parametrize("bad", ["", "abc", "zz" * 32, "ab" * 20])
def test_non_sha256_fingerprints_are_refused(bad: str) -> None:
    """ValueError: the config parser names the line, the CLI turns it into exit 2."""
    with pytest.raises(ValueError, match="64 hex digits"):
        normalize_fingerprint(bad)


def test_addresses_split_and_default_to_443() -> None:
    assert split_address("10.0.0.1") == ("10.0.0.1", 443)
    assert split_address("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert split_address("[fe80::1]:9") == ("fe80::1", 9)
    assert base_url("10.0.0.1") == "https://10.0.0.1:443"


def test_pin_is_found_by_address_then_by_host() -> None:
    tls = TLSConfig(fingerprints={"127.0.0.1:9001": FP, "10.0.0.2": FP.upper()})
    assert trust_for("127.0.0.1:9001", tls).mode == "pin"
    assert trust_for("10.0.0.2:443", tls).fingerprint == FP
    assert trust_for("127.0.0.1:9002", tls).mode == "system"


def test_ca_file_and_insecure_modes() -> None:
    ca = trust_for("h", TLSConfig(ca_file="/ca.pem"))
    assert (ca.mode, ca.ca_file) == ("ca", "/ca.pem")
    insecure = trust_for("h", TLSConfig(insecure=True))
    assert insecure.mode == "insecure"
    assert "NOT verified" in insecure.describe()


def test_tls_contexts_check_what_their_mode_promises() -> None:
    for mode in ("pin", "insecure"):  # self-signed node certificates: the pin decides
        ctx = tls_context(mode)
        assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    system = tls_context("system")
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname
    assert all(c.minimum_version >= ssl.TLSVersion.TLSv1_2 for c in (tls_context("pin"), system))
