"""Benchmark: peak memory and throughput of the dump → zstd → S3 multipart pipeline.

Target (issue "Nightly backups", item 3): memory stays bounded whatever the dump's size, at most
300 MB of peak RSS for the process doing the work. Two kinds of data:

- ``yes``: ~2 GB of ``yes cloudops`` (compresses ~10,000:1: the pipeline's own CPU cost dominates);
- ``random``: ~300 MB of /dev/urandom (incompressible: every byte is uploaded, moto is the limit).

Each run is a fresh interpreter under ``/usr/bin/time -v`` (whole-process peak RSS), which also reports
``VmHWM`` reset just before streaming (the stream's own peak, Airflow and boto3 already imported) and
the resident size before streaming. zstd with ``threads=0`` (compress in the reading thread) and
``threads=-1`` (zstd worker threads) run in turn, A B A B, for ``--rounds`` rounds; medians are shown.
Two references show the ceilings: the same data through the ``zstd`` CLI into /dev/null (source and
compression alone), and the same random bytes uploaded from memory with boto3 alone (moto's speed).

Objects go to a bucket of the benchmark's own on the sandbox's moto, deleted after each run (moto keeps
objects in memory); the sandbox moto's RSS is reported. Run with the sandbox up:
``.venv/bin/python tests/benchmarks/bench_pipeline_memory.py``. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MiB = 1024 * 1024
REGION = "eu-west-1"
CONN_ID = "sandbox_aws"
COMMANDS = {
    "yes": "yes cloudops | head -c {size}",
    "random": "head -c {size} /dev/urandom",
}


def status_mib(field: str) -> float:
    """A VmRSS/VmHWM figure of this process, in MiB."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux clear_refs 5), so the next peak is the stream's own."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def endpoint_of_connection() -> str:
    return str(json.loads(os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"])["extra"]["endpoint_url"])


def admin_client() -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_of_connection(),
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


# The child: one measured run.


def child(args: argparse.Namespace) -> None:
    from datetime import UTC, datetime, timedelta

    from cloudops.catalog.models import Repository
    from cloudops.engines import DumpCommand
    from cloudops.repository import layout
    from cloudops.repository.s3 import BackupRepository

    repository = Repository(name="bench", cloud="bench", bucket=args.bucket, prefix="bench", region=REGION)
    store = BackupRepository(
        repository,
        aws_conn_id=CONN_ID,
        estate="bench",
        part_size=args.part_size_mib * MiB,
        threads=args.threads,
    )
    client = store.client  # imports Airflow's S3Hook and boto3 now, outside the measured part
    backup_id = layout.new_backup_id(datetime.now(UTC))
    key = store.object_key("bench", backup_id, "data.zst")
    baseline = status_mib("VmRSS")
    reset_peak()
    started = time.perf_counter()
    if args.mode == "boto3":
        raw = compressed = upload_from_memory(client, args.bucket, key, args.size, args.part_size_mib * MiB)
    else:
        command = DumpCommand(
            argv=["sh", "-c", COMMANDS[args.mode].format(size=args.size)],
            env={},
            object_name="data",
            format="raw",
            description=f"{args.mode} data",
        )
        item = store.store_object("bench", backup_id, command, level=3, timeout=timedelta(minutes=30))
        raw, compressed, key = item.raw_bytes, item.size, item.key
    seconds = time.perf_counter() - started
    peak = status_mib("VmHWM")
    client.delete_object(Bucket=args.bucket, Key=key)
    print(
        json.dumps(
            {
                "raw": raw,
                "compressed": compressed,
                "seconds": seconds,
                "baseline_mib": baseline,
                "stream_peak_mib": peak,
            }
        )
    )


def upload_from_memory(client: Any, bucket: str, key: str, size: int, part_size: int) -> int:
    """The reference: random bytes already in memory, uploaded part by part with boto3 alone."""
    part = os.urandom(part_size)
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, ServerSideEncryption="AES256")
    parts, sent, number = [], 0, 1
    while sent < size:
        body = part[: min(part_size, size - sent)]
        response = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": response["ETag"]})
        sent += len(body)
        number += 1
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return sent


# The parent: runs, rounds, report.


def run_child(mode: str, size: int, *, threads: int, bucket: str, part_size_mib: int) -> dict[str, float]:
    argv = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        __file__,
        "--child",
        mode,
        "--size",
        str(size),
        "--threads",
        str(threads),
        "--bucket",
        bucket,
        "--part-size-mib",
        str(part_size_mib),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    result["process_peak_mib"] = int(match.group(1)) / 1024 if match else float("nan")
    return result


def zstd_cli_seconds(mode: str, size: int) -> float:
    """The reference: the same source through the zstd CLI (level 3, one thread) into /dev/null."""
    script = COMMANDS[mode].format(size=size) + " | zstd -3 -T1 -q -c > /dev/null"
    started = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True, timeout=1800)
    return time.perf_counter() - started


def moto_rss_mib() -> float:
    pid_file = Path(os.environ.get("CLOUDOPS_SANDBOX_DIR", ROOT / ".sandbox")) / "run" / "moto.pid"
    try:
        pid = pid_file.read_text().split()[0]
        text = Path(f"/proc/{pid}/status").read_text()
    except (OSError, IndexError):
        return float("nan")
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def load_sandbox_env() -> None:
    if f"AIRFLOW_CONN_{CONN_ID.upper()}" in os.environ:
        return
    sys.path.insert(0, str(ROOT / "plugins"))
    from cloudops.sandbox.layout import read_env_file

    env_file = Path(os.environ.get("CLOUDOPS_SANDBOX_DIR", ROOT / ".sandbox")) / "airflow.env"
    if not env_file.exists():
        raise SystemExit(f"{env_file} does not exist: start the sandbox with `make sandbox` first")
    os.environ.update(read_env_file(env_file))


def parent(args: argparse.Namespace) -> None:
    load_sandbox_env()
    s3 = admin_client()
    bucket = f"cloudops-bench-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    sizes = {"yes": args.yes_bytes, "random": args.random_bytes}
    variants = [("pipeline threads=0", 0), ("pipeline threads=-1", -1)]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    cli: dict[str, list[float]] = {mode: [] for mode in sizes}
    moto_before = moto_rss_mib()
    try:
        for round_number in range(1, args.rounds + 1):
            for mode, size in sizes.items():
                cli[mode].append(zstd_cli_seconds(mode, size))
                runs = [*variants, ("boto3 alone, from memory", 0)] if mode == "random" else variants
                for label, threads in runs:
                    child_mode = "boto3" if label.startswith("boto3") else mode
                    result = run_child(
                        child_mode, size, threads=threads, bucket=bucket, part_size_mib=args.part_size_mib
                    )
                    results.setdefault((mode, label), []).append(result)
            print(f"round {round_number}/{args.rounds} done; sandbox moto RSS {moto_rss_mib():.0f} MiB")
    finally:
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
        for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) or []:
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=bucket)

    cpus = os.cpu_count()
    memory = Path("/proc/meminfo").read_text().split("\n", 1)[0].split(":")[1].strip()
    print(
        f"\nmachine: {platform.machine()}, {cpus} CPUs, {memory} RAM, Python {platform.python_version()}; "
        f"zstd level 3, parts of {args.part_size_mib} MiB; medians of {args.rounds} rounds (min-max)"
    )
    header = (
        f"{'data':8s} {'run':28s} {'raw MB':>8s} {'stored MB':>10s} {'s':>12s} {'MB/s raw':>10s} "
        f"{'base RSS':>9s} {'stream peak':>12s} {'process peak':>13s}"
    )
    print(header)
    print("-" * len(header))
    for mode, size in sizes.items():
        seconds = cli[mode]
        print(
            f"{mode:8s} {'zstd CLI -3 -T1 > /dev/null':28s} {size / 1e6:8.0f} {'-':>10s} "
            f"{_median(seconds):12s} {size / 1e6 / statistics.median(seconds):10.0f}"
        )
        for (result_mode, label), runs in results.items():
            if result_mode != mode:
                continue
            times = [run["seconds"] for run in runs]
            print(
                f"{mode:8s} {label:28s} {runs[0]['raw'] / 1e6:8.0f} {runs[0]['compressed'] / 1e6:10.1f} "
                f"{_median(times):12s} {runs[0]['raw'] / 1e6 / statistics.median(times):10.0f} "
                f"{statistics.median(r['baseline_mib'] for r in runs):7.0f} M "
                f"{statistics.median(r['stream_peak_mib'] for r in runs):10.0f} M "
                f"{max(r['process_peak_mib'] for r in runs):11.0f} M"
            )
    print(
        "\nbase RSS: resident before streaming (Airflow's S3Hook and boto3 imported); stream peak: VmHWM "
        "reset just before streaming; process peak: /usr/bin/time -v, worst run."
    )
    print(f"sandbox moto RSS: {moto_before:.0f} MiB before, {moto_rss_mib():.0f} MiB after (objects deleted)")


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--yes-bytes", type=int, default=2_000_000_000)
    parser.add_argument("--random-bytes", type=int, default=300_000_000)
    parser.add_argument("--part-size-mib", type=int, default=16)
    parser.add_argument("--child", dest="mode", choices=[*COMMANDS, "boto3"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        load_sandbox_env()
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
