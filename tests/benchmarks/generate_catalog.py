"""Write a large synthetic catalog for benchmarks: N databases and F fleets of H hosts over E estates."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def estate_document(estate: int, databases: int, fleets: int, hosts: int) -> dict[str, object]:
    """One estate with its share of databases (primary/replica pairs) and fleets."""
    name = f"estate_{estate:03d}"
    dbs = []
    for index in range(databases):
        cluster = f"{name}_cluster_{index // 2:03d}"
        role = "primary" if index % 2 == 0 else "replica"
        database: dict[str, object] = {
            "name": f"{name}_db_{index:03d}",
            "engine": "postgres" if index % 4 < 2 else "mariadb",
            "conn_id": f"{name}_db_{index:03d}",
            "role": role,
            "cluster": cluster,
            "database": "app",
            "rpo": "24h",
            "rto": "1h",
        }
        if role == "primary":
            database["backup"] = {
                "repository": f"{name}_backups",
                "schedule": "0 2 * * *",
                "retention": {"keep_last": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12},
            }
            database["drill"] = {"schedule": "on_backup", "scratch_conn_id": f"{name}_scratch"}
        dbs.append(database)
    return {
        "estate": name,
        "owner": f"{name}-oncall",
        "timezone": "Europe/Paris",
        "clouds": [
            {"name": f"{name}_aws", "provider": "aws", "aws_conn_id": f"{name}_aws", "region": "eu-west-1"}
        ],
        "repositories": [
            {
                "name": f"{name}_backups",
                "cloud": f"{name}_aws",
                "bucket": f"{name.replace('_', '-')}-backups",
                "region": "eu-west-1",
                "object_lock": {"mode": "GOVERNANCE", "days": 30},
            }
        ],
        "databases": dbs,
        "fleets": [
            {
                "name": f"{name}_fleet_{fleet:02d}",
                "os_family": "debian",
                "hosts": [
                    {
                        "name": f"{name}-f{fleet:02d}-h{host:02d}",
                        "ssh_conn_id": f"{name}_f{fleet:02d}_h{host:02d}",
                        "groups": ["canary"] if host == 0 else [],
                    }
                    for host in range(hosts)
                ],
            }
            for fleet in range(fleets)
        ],
    }


def write_catalog(
    directory: Path, *, estates: int = 10, databases: int = 500, fleets: int = 50, hosts: int = 40
) -> list[Path]:
    """Write ``estates`` files sharing ``databases`` databases and ``fleets`` fleets of ``hosts``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for estate in range(estates):
        document = estate_document(estate, databases // estates, fleets // estates, hosts)
        path = directory / f"estate_{estate:03d}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--estates", type=int, default=10)
    parser.add_argument("--databases", type=int, default=500)
    parser.add_argument("--fleets", type=int, default=50)
    parser.add_argument("--hosts", type=int, default=40)
    args = parser.parse_args()
    for written in write_catalog(
        args.directory, estates=args.estates, databases=args.databases, fleets=args.fleets, hosts=args.hosts
    ):
        print(written)
