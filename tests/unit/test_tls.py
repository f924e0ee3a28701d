"""botd.tls and the bot's TLS settings: files checked at config time, failed checks in words."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from botd import tls
from botd.config import load_config
from botd.errors import ConfigError, ServerUnavailable, TlsFailure
from botd.server.config import ServerConfig, check_tls
from botd.transport_errors import map_transport_errors


@pytest.fixture
def ca_pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_a_missing_or_garbage_tls_file_is_a_problem_naming_its_setting(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN nothing\n")
    with pytest.raises(ConfigError) as missing:
        load_config(env={"BOT_CA_FILE": str(tmp_path / "nope.pem")})
    assert missing.value.problems == [
        f"BOT_CA_FILE: cannot read {str(tmp_path / 'nope.pem')!r}: No such file or directory;"
        " fix the path"
    ]
    with pytest.raises(ConfigError, match=r"BOT_CA_FILE: .* holds no PEM CA certificate"):
        load_config(env={"BOT_CA_FILE": str(garbage)})
    with pytest.raises(ConfigError, match=r"BOT_TLS_CERT/BOT_TLS_KEY: .* not a PEM certificate"):
        load_config(env={"BOT_TLS_CERT": str(garbage)})
    with pytest.raises(ConfigError, match="--tls-key: needs BOT_TLS_CERT"):
        load_config(env={}, overrides={"tls_key": garbage})
    with pytest.raises(ConfigError, match=r"BOT_TLS_CERT: .* holds a NUL character"):
        load_config(env={"BOT_TLS_CERT": "\x00"})  # found by the config property test


def test_a_ca_file_and_a_client_certificate_make_a_context(tmp_path: Path, ca_pem: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(ca_pem))
    client = tmp_path / "client.pem"
    ca.issue_cert("bot@test").private_key_and_cert_chain_pem.write_to_path(str(client))
    config = load_config(env={"BOT_CA_FILE": str(ca_pem), "BOT_TLS_CERT": str(client)})
    assert config.ca_file == ca_pem
    context = tls.client_context(ca_file=config.ca_file, cert_file=config.tls_cert)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the CA file only, not the system's bundle


def _verify_error(code: int, message: str) -> httpx.ConnectError:
    cause = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    cause.verify_code, cause.verify_message = code, message
    error = httpx.ConnectError("")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("code", "message", "says"),
    [
        (20, "unable to get local issuer certificate", "is not signed by a CA in BOT_CA_FILE=x"),
        (19, "self-signed certificate in certificate chain", "is not signed by a CA in"),
        (62, "Hostname mismatch, certificate is not valid for 'a'.", "not valid for this host"),
        (10, "certificate has expired", "out of its validity period"),
    ],
)
def test_a_failed_tls_check_says_which_one_and_stays_retryable(
    code: int, message: str, says: str
) -> None:
    trust = tls.Trust(ca="BOT_CA_FILE=x")
    with pytest.raises(TlsFailure) as caught, map_transport_errors("register", trust):
        raise _verify_error(code, message)
    assert says in str(caught.value) and message in str(caught.value)
    assert str(caught.value).startswith("register: TLS: ")
    assert isinstance(caught.value, ServerUnavailable)  # retried with backoff


def test_the_system_bundle_is_named_when_no_ca_file_is_set() -> None:
    found = tls.explain(_verify_error(20, "unable to get local issuer certificate"), tls.Trust())
    assert found is not None and "a CA in the system's CA bundle" in found


def test_a_connection_error_without_tls_is_not_explained() -> None:
    assert tls.explain(httpx.ConnectError("refused"), tls.Trust()) is None
    with pytest.raises(ServerUnavailable) as caught, map_transport_errors("health"):
        raise httpx.ConnectError("[Errno 111] Connection refused")
    assert not isinstance(caught.value, TlsFailure)


def test_the_servers_tls_files_with_a_nul_are_a_problem_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--tls-cert: .* holds a NUL character"):
        check_tls(ServerConfig(tls_cert="a\x00b", tls_key="k"))
