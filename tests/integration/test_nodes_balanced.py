"""Three `serve` nodes on one PostgreSQL behind a load balancer (real nginx, round robin
over the nodes' HTTP-01 responders), with Pebble validating for real through it: a
validation request reaches whichever node nginx picks, not the one working on the order,
and every node answers every pending challenge from the store. Devices holding a
websocket to one node get their chains, and a gateway agent connected to one node answers
the tokens and installs the certificates, whichever node worked on the order."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.sync.client import connect

from certbroker.crypto.keys import key_matches_certificate, load_private_key
from tests.support.nginx import http_preamble, nginx_binary, run_nginx, user_directive
from tests.support.nodes import Cluster, start_cluster
from tests.support.pebble import PebbleServer
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.processes import terminate

NODES, CERTIFICATES, DEVICES = 3, 12, 9

BALANCER = """\
worker_processes 1;
{user}
error_log {work}/error.log warn;
events {{
    worker_connections 256;
}}
http {{
    log_format upstream '$status $upstream_addr $request_uri';
    access_log {work}/access.log upstream;
{preamble}
    upstream certbroker_http01 {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location /.well-known/acme-challenge/ {{
            proxy_pass http://certbroker_http01;
            proxy_set_header Host $host;
        }}
    }}
}}
"""


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresServer, pebble: PebbleServer) -> Iterator[Cluster]:
    yield from start_cluster(tmp_path, postgres, pebble)


def test_pebble_validates_through_a_load_balancer_whichever_node_answers(
    cluster: Cluster, tmp_path: Path
) -> None:
    http01_ports = [free_port() for _ in range(NODES)]
    for n, port in enumerate(http01_ports):
        cluster.start_node(n, tmp_path, CERTBROKER_HTTP01_PORT=str(port))
    cluster.wait_up()
    work = tmp_path / "nginx"
    assert cluster.cli.pebble is not None
    balancer_port = cluster.cli.pebble.http_port  # where Pebble validates
    conf = BALANCER.format(
        user=user_directive(), work=work, preamble=http_preamble(work), port=balancer_port,
        servers="\n".join(f"        server 127.0.0.1:{p};" for p in http01_ports),
    )  # fmt: skip
    work.mkdir()
    with run_nginx(nginx_binary("load-balancer"), work, balancer_port, conf):

        def request(k: int) -> None:
            answer = httpx.post(
                cluster.apis[k % NODES] + "/api/v1/certificates",
                json={"names": [f"balanced-{k:02d}.example.com"]},
                headers={"Authorization": f"Bearer {cluster.token}"},
                trust_env=False,
                timeout=60,
            )
            assert answer.status_code == 202, answer.text

        token = cluster.cli("client", "add", "dev", "--allow", "*.devices.example.com")
        device_token = token.stdout.strip().splitlines()[-1]

        def device(k: int) -> None:
            """A device on node k % 3's websocket: its CSR in, its chain pushed back."""
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([]))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(f"d{k}.devices.example.com")]), critical=False)
                .sign(key, hashes.SHA256())
                .public_bytes(serialization.Encoding.PEM).decode()
            )  # fmt: skip
            url = cluster.apis[k % NODES].replace("http://", "ws://") + "/api/v1/csr/ws"
            with connect(url, additional_headers={"Authorization": f"Bearer {device_token}"},
                         open_timeout=10) as socket:  # fmt: skip
                socket.send(json.dumps({"csr": csr}))
                state: dict[str, object] = {}
                while state.get("state") not in ("valid", "failed"):
                    state = json.loads(socket.recv(timeout=180))
            assert state["state"] == "valid", state
            leaf = x509.load_pem_x509_certificates(str(state["chain"]).encode())[0]
            assert leaf.public_key().public_numbers() == key.public_key().public_numbers()

        with ThreadPoolExecutor(6) as pool:
            devices = pool.map(device, range(DEVICES))
            list(pool.map(request, range(CERTIFICATES)))
            list(devices)
        deadline = time.monotonic() + 240
        while (
            valid := cluster.sql("SELECT count(*) FROM certificates WHERE status = 'valid'")[0][0]
        ) < CERTIFICATES + DEVICES:
            assert time.monotonic() < deadline, (
                f"{valid} of {CERTIFICATES + DEVICES} valid; nginx saw:\n"
                + (work / "access.log").read_text()[-3000:]
            )
            time.sleep(0.5)

    # Pebble's validations went to every node, and every one was answered (200).
    seen = [line.split() for line in (work / "access.log").read_text().splitlines()]
    validations = [(status, re.sub(r".*:", "", upstream)) for status, upstream, _ in seen]
    assert all(status == "200" for status, _ in validations), validations
    by_node = Counter(port for _, port in validations)
    assert set(by_node) == {str(p) for p in http01_ports}, by_node
    assert sum(by_node.values()) >= CERTIFICATES + DEVICES
    # Each certificate from one order, which one node worked on.
    per_cert = cluster.sql("SELECT certificate_id, count(*) FROM orders GROUP BY certificate_id")
    assert {row[1] for row in per_cert} == {1} and len(per_cert) == CERTIFICATES + DEVICES
    states = cluster.sql("SELECT state, count(*) FROM orders GROUP BY state")
    assert [tuple(row) for row in states] == [("valid", CERTIFICATES + DEVICES)]
    # Devices were pushed chains that another node than theirs obtained: which node
    # issued each order is in its log; device k held a socket to node k % 3. (All nine
    # on their own node by chance: one run in 20,000.)
    issued_by = {
        int(m.group(1)): n
        for n, log in enumerate(cluster.logs)
        for m in re.finditer(r"order (\d+): issued", log.read_text())
    }
    orders_of = {
        str(row[1]): int(row[0])
        for row in cluster.sql(
            "SELECT o.id, c.names FROM orders o JOIN certificates c ON c.id = o.certificate_id"
        )
    }
    elsewhere = [
        k for k in range(DEVICES)
        if issued_by[orders_of[json.dumps([f"d{k}.devices.example.com"])]] != k % NODES
    ]  # fmt: skip
    assert elsewhere, issued_by


AGENT_ADDRESS = "127.0.0.5"  # where Pebble looks for the agent's names
AGENT_CERTIFICATES = 4


def test_an_agent_on_one_node_answers_and_installs_what_any_node_obtains(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A gateway agent holds its websocket to node 0 alone; its certificates' orders are
    taken by whichever node's worker comes first, and the tokens it must answer, and the
    certificates it installs, reach it through node 0 from the store. (Were they handed
    over only inside the node working on the order, all four would have to be node 0's:
    one run in 81.)"""
    for n in range(NODES):
        cluster.start_node(n, tmp_path)
    cluster.wait_up()
    pebble = cluster.cli.pebble
    assert pebble is not None and pebble.challtestsrv_url is not None
    names = [f"edge-{k}.agents.example.com" for k in range(AGENT_CERTIFICATES)]
    for name in names:
        pointed = httpx.post(pebble.challtestsrv_url + "/add-a", trust_env=False,
                             json={"host": name + ".", "addresses": [AGENT_ADDRESS]})  # fmt: skip
        assert pointed.status_code == 200, pointed.text
    added = cluster.cli("client", "add", "edge", "--allow", "*.agents.example.com")
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    (gateway / "token").write_text(added.stdout.strip().splitlines()[-1] + "\n")
    tables = "".join(
        f'\n[[certificate]]\nnames = ["{name}"]\ncert_path = "tls/{k}/fullchain.pem"\n'
        f'key_path = "tls/{k}/privkey.pem"\n'
        for k, name in enumerate(names)
    )
    config = gateway / "agent.toml"
    config.write_text(
        f'broker = "{cluster.apis[0]}"\ntoken_file = "token"\n'
        f'http01_listen = "{AGENT_ADDRESS}:{pebble.http_port}"\n'
        f'state_file = "state/agent.json"\n{tables}'
    )
    with (gateway / "agent.log").open("w") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "certbroker", "agent", "--config", str(config)],
            env=cluster.cli.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        files = [gateway / "tls" / str(k) / "privkey.pem" for k in range(AGENT_CERTIFICATES)]
        while not all(f.exists() for f in files):
            assert agent.poll() is None and time.monotonic() < deadline, (
                gateway / "agent.log"
            ).read_text()[-3000:]
            time.sleep(0.3)
    finally:
        terminate(agent)
    for k, name in enumerate(names):
        leaf = x509.load_pem_x509_certificates(
            (gateway / "tls" / str(k) / "fullchain.pem").read_bytes()
        )[0]
        key = load_private_key((gateway / "tls" / str(k) / "privkey.pem").read_bytes())
        assert key_matches_certificate(key, leaf)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
    per_cert = cluster.sql("SELECT certificate_id, count(*) FROM orders GROUP BY certificate_id")
    assert {row[1] for row in per_cert} == {1} and len(per_cert) == AGENT_CERTIFICATES
