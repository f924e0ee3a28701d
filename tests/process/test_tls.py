"""TLS from outside: real ``botd server`` processes over https with a ``trustme`` CA, real
``botd run`` bots and producer commands.

- a bot with ``BOT_CA_FILE`` completes jobs that ``botd submit --ca-file`` queued;
- with the wrong CA (or a certificate for another host name) the bot keeps trying and logs,
  as an ERROR, which check failed; so do the producer commands;
- a server with ``--tls-client-ca``: a bot without ``BOT_TLS_CERT`` fails clearly, one with
  it works;
- a TLS file that cannot be read: the server and the bot exit 78 naming the setting.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trustme

from tests.support.procs import BOTD, Procs, bot_env, botd, clean_env, wait_for
from tests.support.server import free_port

pytestmark = pytest.mark.slow

DEADLINE_S = 30.0


@attrs.frozen
class Pki:
    ca: Path  # the CA that signed the servers' and the bot's certificates
    other_ca: Path  # a CA that signed nothing here
    server: Path  # key and chain of a certificate for 127.0.0.1
    elsewhere: Path  # key and chain of a certificate for another host name
    client: Path  # key and chain of a client certificate (signed by ``ca``)


@attrs.frozen
class Servers:
    pki: Pki
    plain_tls: str  # https, no client certificate asked for
    wrong_name: str  # https, a certificate for another host name
    mutual: str  # https, a client certificate required


def _make_pki(tmp: Path) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    pki = Pki(tmp / "ca.pem", tmp / "other-ca.pem", tmp / "server.pem", tmp / "elsewhere.pem",
              tmp / "client.pem")  # fmt: skip
    ca.cert_pem.write_to_path(str(pki.ca))
    other.cert_pem.write_to_path(str(pki.other_ca))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pki.server))
    elsewhere = ca.issue_cert("elsewhere.example")
    elsewhere.private_key_and_cert_chain_pem.write_to_path(str(pki.elsewhere))
    ca.issue_cert("bot-1@botd.test").private_key_and_cert_chain_pem.write_to_path(str(pki.client))
    return pki


def _trusting(pki: Pki, *, check: bool = True) -> ssl.SSLContext:
    """The test's own client context: trusts ``pki.ca``, presents ``pki.client``."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client))
    if not check:
        context.check_hostname = False
    return context


def _https_up(url: str, pki: Pki) -> bool | None:
    """True once ``url`` answers its health check (its host name is not checked here)."""
    try:
        with httpx.Client(verify=_trusting(pki, check=False), timeout=2.0) as client:
            return client.get(f"{url}/v1/health").status_code == 200 or None
    except httpx.HTTPError:
        return None


def _serve(procs: Procs, name: str, tmp: Path, cert: Path, *extra: str) -> str:
    port = free_port()
    args = ["server", "--port", str(port), "--db", str(tmp / f"{name}.db"), "--lease-ttl", "5",
            "--heartbeat-interval", "0.3", "--tls-cert", str(cert), "--tls-key", str(cert),
            *extra]  # fmt: skip
    procs.spawn(name, args, clean_env({"BOT_LOG_FORMAT": "json"}))
    return f"https://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("tls")
    pki = _make_pki(tmp)
    with Procs(tmp) as procs:
        found = Servers(
            pki,
            _serve(procs, "plain-tls", tmp, pki.server),
            _serve(procs, "wrong-name", tmp, pki.elsewhere),
            _serve(procs, "mutual", tmp, pki.server, "--tls-client-ca", str(pki.ca)),
        )
        for url in (found.plain_tls, found.wrong_name, found.mutual):
            wait_for(f"the server at {url}", lambda: _https_up(url, pki), tuple(procs.all))  # noqa: B023
        yield found


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path, grace=5.0) as running:
        yield running


def _submit(url: str, pki: Pki) -> str:
    done = botd(["submit", "--kind", "simulate", "--server", url, "--ca-file", str(pki.ca)],
                clean_env({}))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _job(url: str, pki: Pki, job_id: str) -> dict[str, Any]:
    with httpx.Client(verify=_trusting(pki), timeout=5.0) as client:
        body: dict[str, Any] = client.get(f"{url}/v1/jobs/{job_id}").json()
        return body


def _tls_errors(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if "TLS:" in str(line.get("error", ""))]


def test_a_bot_with_bot_ca_file_completes_jobs_over_tls(servers: Servers, procs: Procs) -> None:
    pki = servers.pki
    job_id = _submit(servers.plain_tls, pki)
    procs.bot("bot", bot_env("tls-bot", servers.plain_tls, None, None, BOT_CA_FILE=str(pki.ca)))
    wait_for(
        "the job to succeed over TLS",
        lambda: _job(servers.plain_tls, pki, job_id)["status"] == "succeeded" or None,
        tuple(procs.all),
        timeout=DEADLINE_S,
    )
    waited = botd(["jobs", "wait", job_id, "--server", servers.plain_tls, "--ca-file",
                   str(pki.ca)], clean_env({}))  # fmt: skip
    assert waited.returncode == 0, waited.stderr


def test_with_the_wrong_ca_the_bot_says_which_check_failed(servers: Servers, procs: Procs) -> None:
    pki = servers.pki
    bot = procs.bot(
        "bot", bot_env("wrong-ca", servers.plain_tls, None, None, BOT_CA_FILE=str(pki.other_ca))
    )
    found = wait_for("a TLS error", lambda: _tls_errors(bot.logs()) or None, (bot,),
                     timeout=DEADLINE_S)  # fmt: skip
    line = found[0]
    assert line["level"] == "ERROR"
    assert f"not signed by a CA in BOT_CA_FILE={pki.other_ca}" in line["error"]
    assert "certificate verify failed" in line["error"]
    assert bot.alive()  # it keeps trying: a rotated certificate may fix it

    listed = botd(["jobs", "list", "--server", servers.plain_tls, "--ca-file",
                   str(pki.other_ca)], clean_env({}))  # fmt: skip
    assert listed.returncode != 0
    assert f"not signed by a CA in --ca-file {pki.other_ca}" in listed.stderr
    conformance = botd(["conformance", servers.plain_tls, "--only", "health"],
                       clean_env({"BOTD_CA_FILE": str(pki.other_ca)}))  # fmt: skip
    assert conformance.returncode == 2
    assert "not signed by a CA in --ca-file" in conformance.stderr


def test_a_certificate_for_another_host_name_is_named_as_such(
    servers: Servers, procs: Procs
) -> None:
    pki = servers.pki
    listed = botd(["jobs", "list", "--server", servers.wrong_name, "--ca-file", str(pki.ca)],
                  clean_env({}))  # fmt: skip
    assert "TLS: the server's certificate is not valid for this host name" in listed.stderr
    bot = procs.bot(
        "bot", bot_env("wrong-name", servers.wrong_name, None, None, BOT_CA_FILE=str(pki.ca))
    )
    found = wait_for("a TLS error", lambda: _tls_errors(bot.logs()) or None, (bot,),
                     timeout=DEADLINE_S)  # fmt: skip
    assert "not valid for this host name" in found[0]["error"]


def test_a_server_that_requires_a_client_certificate(servers: Servers, procs: Procs) -> None:
    pki = servers.pki
    without = procs.bot(
        "without", bot_env("no-cert", servers.mutual, None, None, BOT_CA_FILE=str(pki.ca))
    )
    with httpx.Client(verify=_trusting(pki), timeout=5.0) as client:
        job_id = client.post(f"{servers.mutual}/v1/jobs", json={"kind": "simulate"}).json()[
            "job_id"
        ]
    found = wait_for(
        "the bot without a certificate to say why it fails",
        lambda: [x for x in without.logs() if "BOT_TLS_CERT" in str(x.get("error", ""))] or None,
        (without,),
        timeout=DEADLINE_S,
    )
    assert "requires a client certificate" in found[0]["error"]
    assert _job(servers.mutual, pki, job_id)["status"] == "queued"

    procs.bot("with", bot_env("with-cert", servers.mutual, None, None, BOT_CA_FILE=str(pki.ca),
                              BOT_TLS_CERT=str(pki.client)))  # fmt: skip
    wait_for(
        "the bot with a certificate to complete the job",
        lambda: _job(servers.mutual, pki, job_id)["status"] == "succeeded" or None,
        tuple(procs.all),
        timeout=DEADLINE_S,
    )


def test_tls_files_that_cannot_be_read_exit_78_naming_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    server = botd(["server", "--port", str(free_port()), "--db", ":memory:", "--tls-cert",
                   str(missing), "--tls-key", str(missing)], clean_env({}))  # fmt: skip
    assert server.returncode == 78, server.stderr
    assert "--tls-cert" in server.stderr and str(missing) in server.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    env = bot_env("bad-ca", "https://127.0.0.1:1", None, None, BOT_CA_FILE=str(garbage),
                  BOT_LOG_FORMAT="json")  # fmt: skip
    bot = subprocess.run([*BOTD, "run"], env=env, capture_output=True, text=True, timeout=20)
    assert bot.returncode == 78
    problems = [json.loads(x) for x in bot.stdout.splitlines() if x.startswith("{")]
    assert any("BOT_CA_FILE" in str(p.get("problem")) for p in problems), bot.stdout
