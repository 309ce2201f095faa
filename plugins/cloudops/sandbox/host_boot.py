"""How a sandbox host is laid out on disk and how it boots: overlayfs, namespaces, mounts, PID 1.

Every host is a directory ``<sandbox>/hosts/<name>/``:

- ``upper/``, ``work/``: its overlayfs layers over the shared, read-only Debian root (the lower layer);
  everything the host ever wrote (dpkg database, logs, installed packages) is in ``upper/``;
- ``root/``: the mount point of the merged view, mounted only inside the host's own mount namespace
  (nothing of a host is ever mounted in the machine's namespace, so nothing is left behind there);
- ``guest/``: files copied into the host at every boot (host key, sshd drop-in, authorized_keys,
  sudoers, apt sources, the guest's init and reboot scripts), written by `cloudops sandbox up`;
- ``control/``: bound at /run/sandbox-ctl inside the host: the guest's `reboot` writes its request
  there, and tests drop fault files there (see host_supervisor);
- ``state/``: what the supervisor reports (state.json, the current boot id, the guest's pid);
- ``host.json``: what the supervisor needs to boot it (HostConfig).

A boot runs ``unshare --fork --pid --mount --uts --ipc --time --boottime=-<machine uptime>`` and, in the
new namespaces, BOOT_SCRIPT: mount the overlay, copy guest/ in, mount /proc, a fresh tmpfs /run, its own
/dev with devpts and /dev/shm, bind a fresh UUID over /proc/sys/kernel/random/boot_id and the newest
/boot/vmlinuz-<version> over /proc/sys/kernel/osrelease (the "running kernel"), bind the apt repository
read-only, set the hostname, pivot_root into the overlay, detach the machine's mounts and exec the
guest's /usr/local/sbin/sandbox-init as PID 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

CONTROL_MOUNT = "/run/sandbox-ctl"
REBOOT_REQUEST = "reboot-requested"
POWEROFF_REQUEST = "poweroff-requested"
NEVER_COME_BACK = "never-come-back"
BOOT_DELAY_FILE = "boot-delay"
GUEST_INIT = "/usr/local/sbin/sandbox-init"

# Runs as root in the new namespaces, before and while it becomes the host. Positional arguments:
# mode (boot | provision), lower dir, host dir, hostname, repository dir ("" for none), its guest path,
# and for provision the command to run chrooted in the host.
BOOT_SCRIPT = r"""
set -eu
mode=$1 lower=$2 hostdir=$3 name=$4 repo=$5 guest_repo=$6
root=$hostdir/root
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$hostdir/upper,workdir=$hostdir/work" "$root"
# The guest's own files of this sandbox; existing directories keep their owner and mode.
tar -C "$hostdir/guest" -cf - . | tar -C "$root" -xpf - --no-overwrite-dir
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m tmpfs "$root/run"
mkdir -p "$root/run/sandbox-ctl" "$root/run/sandbox-boot" "$root/run/lock"
mount --bind "$hostdir/control" "$root/run/sandbox-ctl"
mount -t tmpfs -o mode=0755,nosuid,size=4m tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    : > "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mkdir -m 0755 "$root/dev/pts"
mkdir -m 1777 "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
# A boot id of this boot, and the running kernel: the newest kernel installed when it booted.
boot=$root/run/sandbox-boot
cat /proc/sys/kernel/random/uuid > "$boot/boot_id"
kernel=$(ls "$root/boot" 2>/dev/null | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1)
[ -n "$kernel" ] || kernel=$(uname -r)
printf '%s\n' "$kernel" > "$boot/osrelease"
for entry in random/boot_id osrelease; do
    target=$root/proc/sys/kernel/$entry
    mount --bind "$boot/${entry#random/}" "$target"
    mount -o remount,bind,ro "$target"
done
if [ -n "$repo" ]; then
    mkdir -p "$root$guest_repo"
    mount --bind "$repo" "$root$guest_repo"
    mount -o remount,bind,ro "$root$guest_repo"
fi
hostname "$name"
if [ "$mode" = provision ]; then
    exec chroot "$root" /bin/sh -c "$7"
fi
cp "$boot/boot_id" "$hostdir/state/boot_id"
cd "$root"
pivot_root . .
umount -l .
cd /
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb "$GUEST_INIT"
""".replace("$GUEST_INIT", GUEST_INIT)


@dataclass(frozen=True)
class HostConfig:
    """What the supervisor needs to boot one host (``host.json``)."""

    name: str
    lower: str
    repository: str  # "" when the host has no apt repository bound in
    guest_repository: str
    reboot_delay_seconds: float


@dataclass(frozen=True)
class HostPaths:
    """The directories and files of one host (see the module docstring)."""

    top: Path

    @property
    def upper(self) -> Path:
        return self.top / "upper"

    @property
    def work(self) -> Path:
        return self.top / "work"

    @property
    def root(self) -> Path:
        return self.top / "root"

    @property
    def guest(self) -> Path:
        return self.top / "guest"

    @property
    def control(self) -> Path:
        return self.top / "control"

    @property
    def state(self) -> Path:
        return self.top / "state"

    @property
    def config_file(self) -> Path:
        return self.top / "host.json"

    @property
    def created_file(self) -> Path:
        """Names the root the host was created from; missing until its first-boot state is complete."""
        return self.top / "created-from"

    @property
    def state_file(self) -> Path:
        return self.state / "state.json"

    @property
    def boot_id_file(self) -> Path:
        return self.state / "boot_id"

    @property
    def guest_pid_file(self) -> Path:
        return self.state / "guest.pid"

    def make_dirs(self) -> None:
        for path in (self.upper, self.work, self.root, self.guest, self.control, self.state):
            path.mkdir(parents=True, exist_ok=True)

    def read_config(self) -> HostConfig:
        return HostConfig(**json.loads(self.config_file.read_text()))

    def config_text(self, config: HostConfig) -> str:
        return json.dumps(asdict(config), indent=2, sort_keys=True) + "\n"

    def read_state(self) -> dict[str, object]:
        try:
            value = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}


def namespace_command(
    config: HostConfig, paths: HostPaths, *, boottime_offset: int | None, provision: str | None = None
) -> list[str]:
    """Return the argv that boots the host (or, with ``provision``, runs that command chrooted in it).

    :param boottime_offset: seconds added to CLOCK_BOOTTIME in the host's time namespace (minus the
        machine's uptime, so the host's uptime starts near 0); None for no time namespace.
    """
    argv = ["unshare", "--fork", "--kill-child", "--pid", "--mount", "--uts", "--ipc"]
    if boottime_offset is not None:
        argv += ["--time", "--boottime", str(boottime_offset)]
    argv += [
        "--",
        "/bin/sh",
        "-c",
        BOOT_SCRIPT,
        "sandbox-boot",
        "provision" if provision is not None else "boot",
        config.lower,
        str(paths.top),
        config.name,
        config.repository,
        config.guest_repository,
    ]
    if provision is not None:
        argv.append(provision)
    return argv


__all__ = [
    "BOOT_DELAY_FILE",
    "BOOT_SCRIPT",
    "CONTROL_MOUNT",
    "GUEST_INIT",
    "NEVER_COME_BACK",
    "POWEROFF_REQUEST",
    "REBOOT_REQUEST",
    "HostConfig",
    "HostPaths",
    "namespace_command",
]
