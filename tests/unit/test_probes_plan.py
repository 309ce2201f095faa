"""Probe planning, scrubbing and coverage: the pure parts of the probe process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudops.catalog import Catalog, load_catalog_file
from cloudops.errors import CloudOpsError, InvalidInputError
from cloudops.probes.checks import http_request, scrub
from cloudops.probes.coverage import TargetCoverage, coverage, estate_store, samples_root
from cloudops.probes.store import ProbeSample, SampleStore
from cloudops.probes.targets import GRACE, plan_targets

pytestmark = pytest.mark.unit

ESTATE = """\
estate: acme
owner: acme-oncall
databases:
  - {name: shop, engine: postgres, conn_id: acme_shop, database: shop, cluster: shop}
  - {name: shop_replica, engine: postgres, conn_id: acme_shop_r, database: shop, role: replica, cluster: shop}
  - {name: stock, engine: mariadb, conn_id: acme_stock, database: stock}
fleets:
  - name: web
    os_family: debian
    patching:
      window: {days: [sun], start: "02:00", duration: 3h}
      health:
        commands:
          - {command: cat /srv/health, expect_output: OK, timeout: 10s}
    hosts:
      - {name: web-1, ssh_conn_id: acme_web_1, groups: [canary]}
  - name: bare
    os_family: debian
    hosts:
      - {name: bare-1, ssh_conn_id: acme_bare_1}
endpoints:
  - {name: storefront, url: "https://shop.example:8443/health?deep=1", expect_body: OK, timeout: 20s}
  - {name: api, http_conn_id: acme_api, path: /ping, timeout: 5s}
slos:
  - name: shop
    targets:
      - {kind: database, name: shop}
      - {kind: database, name: shop_replica}
      - {kind: database, name: stock}
      - {kind: host, name: web-1}
      - {kind: endpoint, name: storefront}
    objectives: [{role: internal, target_percent: 99.95}, {role: sla, target_percent: 99.9}]
    no_data_policy: excluded
  - name: edge
    targets:
      - {kind: endpoint, name: storefront}
      - {kind: endpoint, name: api}
      - {kind: host, name: bare-1}
    objectives: [{role: internal, target_percent: 99.9}, {role: sla, target_percent: 99.5}]
    no_data_policy: good
"""


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    path = tmp_path / "acme.yaml"
    path.write_text(ESTATE)
    return load_catalog_file(path)


def test_every_slo_target_is_planned_once_with_its_bound_and_a_deadline_inside_the_minute(
    catalog: Catalog,
) -> None:
    targets = plan_targets([catalog])
    by_key = {target.key: target for target in targets}

    assert sorted(by_key) == [
        "database:shop",
        "database:shop_replica",
        "database:stock",
        "endpoint:api",
        "endpoint:storefront",
        "host:bare-1",
        "host:web-1",
    ]  # storefront is in both SLOs: probed once
    assert [target.offset for target in targets] == sorted(target.offset for target in targets)
    for target in targets:
        assert 0 <= target.offset < 60 - target.timeout.total_seconds() - GRACE.total_seconds()
        assert target.deadline < 60
    assert by_key["endpoint:storefront"].timeout == timedelta(seconds=20)
    assert by_key["database:shop"].timeout == timedelta(seconds=10)
    assert by_key["host:web-1"].timeout == timedelta(seconds=15)
    assert (by_key["database:shop"].writable, by_key["database:shop_replica"].writable) == (True, False)
    assert by_key["database:stock"].engine == "mariadb"
    assert [c.command for c in by_key["host:web-1"].commands] == ["cat /srv/health"]
    assert [c.command for c in by_key["host:bare-1"].commands] == ["true"]  # no health gate: a shell
    # The same offsets in every process and every minute.
    assert [t.offset for t in plan_targets([catalog])] == [t.offset for t in targets]


def test_a_bound_that_does_not_fit_the_interval_is_refused_naming_the_target(catalog: Catalog) -> None:
    with pytest.raises(InvalidInputError) as raised:
        plan_targets([catalog], interval=timedelta(seconds=20))
    assert str(raised.value) == (
        "endpoint 'storefront' of estate 'acme': its probe bound 20s plus 2s grace does not fit the "
        "20s interval"
    )


def test_scrub_removes_the_password_and_masks_what_looks_like_a_secret() -> None:
    text = scrub(
        "FATAL: password authentication failed for user app with s3cret-Pw at postgresql://app:s3cret-Pw@db/x",
        ("s3cret-Pw",),
    )
    assert "s3cret-Pw" not in text
    assert "user app" in text  # a login is not a secret, and on call needs it
    assert len(scrub("x" * 500)) == 200


def test_an_endpoint_resolves_from_its_url_or_its_connection_and_never_shows_the_auth(
    catalog: Catalog,
) -> None:
    from airflow.sdk import Connection

    targets = {target.key: target for target in plan_targets([catalog])}
    storefront = http_request(targets["endpoint:storefront"], None)
    assert (storefront.scheme, storefront.host, storefront.port, storefront.path) == (
        "https",
        "shop.example",
        8443,
        "/health?deep=1",
    )
    conn = Connection(
        conn_id="acme_api",
        conn_type="http",
        host="api.acme.example",
        schema="https",
        login="u",
        password="pw-123",
    )
    api = http_request(targets["endpoint:api"], conn)
    assert api.shown == "https://api.acme.example:443/ping"
    assert api.headers == (("Authorization", "Basic dTpwdy0xMjM="),)
    assert "pw-123" in api.secrets
    assert "dTpwdy0xMjM=" in api.secrets
    with pytest.raises(CloudOpsError, match="no host to probe"):
        http_request(targets["endpoint:api"], Connection(conn_id="acme_api", conn_type="http"))


def test_coverage_counts_expected_recorded_and_failed_minutes(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    start = datetime(2026, 11, 30, 23, 58, tzinfo=UTC)
    store.append(
        [
            ProbeSample("host:web-1", start + timedelta(seconds=7), True),
            ProbeSample("host:web-1", start + timedelta(seconds=40), False),  # a second sample: same minute
            ProbeSample("host:web-1", start + timedelta(minutes=2, seconds=7), True),  # across midnight
            ProbeSample("host:web-1", start + timedelta(minutes=4, seconds=7), True),  # after the end
            ProbeSample("host:web-2", start + timedelta(minutes=3, seconds=1), False),
        ]
    )
    rows = coverage(store, ["host:web-1", "host:web-2", "host:web-3"], start, start + timedelta(minutes=4))
    assert rows == [
        TargetCoverage("host:web-1", 4, 2, 1),
        TargetCoverage("host:web-2", 4, 1, 1),
        TargetCoverage("host:web-3", 4, 0, 0),
    ]
    assert [float(row.percent) for row in rows] == [50.0, 25.0, 0.0]


def test_coverage_refuses_bounds_off_the_minute_or_naive() -> None:
    store = SampleStore("/nonexistent")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(InvalidInputError, match="not on a whole minute"):
        coverage(store, ["a"], start + timedelta(seconds=5), start + timedelta(hours=1))
    with pytest.raises(InvalidInputError, match="has no time zone"):
        coverage(store, ["a"], datetime(2026, 11, 1), start)  # noqa: DTZ001
    with pytest.raises(InvalidInputError, match="before its start"):
        coverage(store, ["a"], start, start - timedelta(minutes=1))


def test_each_estate_has_its_own_store_under_the_samples_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDOPS_PROBE_SAMPLES", "/srv/samples")
    assert estate_store("acme").root == Path("/srv/samples/acme")
    monkeypatch.delenv("CLOUDOPS_PROBE_SAMPLES")
    with pytest.raises(InvalidInputError, match="CLOUDOPS_PROBE_SAMPLES"):
        samples_root()


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[int]:
    """A local HTTPS server with a self-signed certificate for 127.0.0.1, answering 200 "OK"."""
    import http.server
    import ipaddress
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"OK\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_https_is_verified_unless_the_catalog_says_not_to(catalog: Catalog, https_server: int) -> None:
    from cloudops.catalog.models import HttpEndpoint
    from cloudops.probes.checks import probe_endpoint
    from cloudops.probes.targets import ProbeTarget

    def target(verify: bool) -> ProbeTarget:
        endpoint = HttpEndpoint(
            name="self_signed",
            url=f"https://127.0.0.1:{https_server}/health",
            expect_body="OK",
            timeout=timedelta(seconds=3),
            verify_tls=verify,
        )
        return ProbeTarget(
            estate="acme",
            kind="endpoint",
            name="self_signed",
            key="endpoint:self_signed",
            used_by="endpoint 'self_signed'",
            conn_id=None,
            timeout=endpoint.timeout,
            endpoint=endpoint,
        )

    checked = probe_endpoint(target(True), http_request(target(True), None))
    assert checked.ok is False
    assert "CERTIFICATE_VERIFY_FAILED" in checked.detail
    unchecked = probe_endpoint(target(False), http_request(target(False), None))
    assert (unchecked.ok, unchecked.detail) == (True, "status 200")
