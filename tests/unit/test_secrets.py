"""What counts as a secret: key names and value shapes (M1 of the safety review), and what does not."""

from __future__ import annotations

import pytest

from cloudops.secrets import MASK, is_secret_key, mask_secrets, mask_string, secret_kind

pytestmark = pytest.mark.unit

SECRET_KEYS = [
    "password", "db_pass", "pass", "passphrase", "pgpass", "ssh_key", "signing_key", "access_key",
    "Authorization", "bearer", "secretKey", "AccessToken", "x-auth-token", "api-key", "dsn", "token",
    "aws_secret_access_key", "client_secret", "DB_PASSWORD", "apiKey",
]  # fmt: skip
PLAIN_KEYS = [
    "passed", "bypass_cache", "kms_key_id", "smtp_conn_id", "token_conn_id", "access_log", "keep_tags",
    "description", "key", "checks", "backup_id", "sha256",
]  # fmt: skip


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_credential_names_are_secret_keys(key: str) -> None:
    assert is_secret_key(key)
    assert mask_secrets({key: "value-1234"}) == {key: MASK}


@pytest.mark.parametrize("key", PLAIN_KEYS)
def test_other_names_are_not(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize(
    ("value", "masked", "kind"),
    [
        (
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcDEF_123-x expired",
            "token *** expired",
            "a JSON web token",
        ),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123", MASK, "a GitHub token"),
        ("slack xoxb-1234567890-abcdefghij", "slack ***", "a Slack token"),
        (
            "jdbc:sqlserver://db;user=sa;Password=p/q@r;database=x",
            "jdbc:sqlserver://db;user=sa;Password=***;database=x",
            "a password setting",
        ),
        ("Server=h;User Id=u;Pwd={a;b};", "Server=h;User Id=u;Pwd=***;", "a password setting"),
        (
            "failed: postgresql://orders:pa/ss@db.example:5432/orders",
            "failed: postgresql://***@db.example:5432/orders",
            "a URL with a password in it",
        ),
        ("Authorization: Bearer abcdefgh12345", "Authorization: Bearer ***", "a bearer token"),
        ("AKIAABCDEFGHIJKLMNOP", MASK, "an AWS access key id"),
        ("-----BEGIN EC PRIVATE KEY-----\nb3Bl\n-----END EC PRIVATE KEY-----", MASK, "a private key"),
    ],
)
def test_secret_values_are_masked_where_they_are(value: str, masked: str, kind: str) -> None:
    assert mask_string(value) == masked
    assert secret_kind(value) == kind


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-23T02:15:00.123456Z",
        "row_count_orders passed",
        'FATAL: password authentication failed for user "orders"',
        "s3://cloudops-backups/orders_pg/20261123T021500Z/manifest.json",
        "https://airflow.example/dags/backup__orders_pg",
        "a" * 64,
    ],
)
def test_ordinary_values_are_kept(value: str) -> None:
    assert mask_string(value) == value
    assert secret_kind(value) is None
