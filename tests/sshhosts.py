"""Test hosts for the remote ops tests: a private OpenSSH server per host (nothing under /etc/ssh),
on loopback or inside a network namespace the test creates, each with its own directory.

`SshHost` runs ``/usr/sbin/sshd -D`` with its own host key, authorized key and config
(in the host's directory); `NetnsLab` makes a bridge and network namespaces joined
to it by veth pairs, with private addresses used only on this machine (no
forwarding, no default route), and removes them again, killing whatever still
runs inside each namespace first.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import procs
from procs import Proc, free_port, wait_until

SSHD = "/usr/sbin/sshd"


def keygen(path: Path) -> Path:
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


class SshHost:
    """One pretend remote host: sshd on (address, port), its dir for simx, its supervisord under dir/var."""

    def __init__(self, base: Path, name: str, client_key: Path, address: str = "127.0.0.1",
                 port: int | None = None, netns: str | None = None):
        self.name, self.address, self.netns = name, address, netns
        self.port = port or free_port(address if netns is None else "127.0.0.1")
        self.ssh_dir = base / f"ssh-{name}"
        self.dir = base / name  # the instance's `dir`
        self.client_key = client_key
        self.proc: Proc | None = None

    @property
    def host_pub(self) -> Path:
        return self.ssh_dir / "host_ed25519.pub"

    def fingerprint(self) -> str:
        return fingerprint(self.host_pub)

    def start(self) -> "SshHost":
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        self.ssh_dir.chmod(0o700)
        keygen(self.ssh_dir / "host_ed25519")
        auth = self.ssh_dir / "authorized_keys"
        shutil.copy(f"{self.client_key}.pub", auth)
        auth.chmod(0o600)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd refuses to start without it
        conf = self.ssh_dir / "sshd_config"
        conf.write_text(f"""Port {self.port}
ListenAddress {self.address}
HostKey {self.ssh_dir}/host_ed25519
PidFile {self.ssh_dir}/sshd.pid
AuthorizedKeysFile {auth}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 50
MaxSessions 50
Subsystem sftp internal-sftp
""")
        subprocess.run([SSHD, "-t", "-f", str(conf)], check=True)
        args = [SSHD, "-D", "-e", "-f", str(conf)]
        if self.netns:
            args = ["ip", "netns", "exec", self.netns] + args
        self.proc = Proc(f"sshd-{self.name}", args, dict(os.environ), self.ssh_dir / "sshd.log")
        wait_until(self._listening, 10, what=f"sshd of {self.name} on {self.address}:{self.port}\n{self.proc.log()}")
        return self

    def _listening(self) -> bool:
        if not self.proc.alive():
            raise AssertionError(f"sshd of {self.name} exited:\n{self.proc.log()}")
        cmd = ["ss", "-ltnH", f"sport = :{self.port}"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        return bool(subprocess.run(cmd, capture_output=True, text=True).stdout.strip())

    def instance_yaml(self, runq_host: str, pools: str, **extra) -> str:
        fields = dict(host=self.address, port=self.port, user="root", key=str(self.client_key),
                      dir=str(self.dir), runq_host=runq_host, **extra)
        body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
        return f"  {self.name}:\n{body}    pools: {pools}\n"

    def stop_supervisord(self) -> None:
        """Shut down the simx supervisord `fab` started in this host's dir (KILL its group if it lingers)."""
        procs.shutdown_supervisord(self.dir / "var", timeout=20)

    def stop(self) -> None:
        self.stop_supervisord()
        if self.proc:
            self.proc.stop()


def run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


def free_subnet() -> str:
    """A 10.X.Y.0/24 that no address or route of this machine touches (so nothing leaves it)."""
    used = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    if "10.0.0.0/8" in used:
        raise AssertionError("this machine routes 10.0.0.0/8: pick other test addresses")
    for _ in range(100):
        a, b = random.randrange(200, 250), random.randrange(1, 250)
        if f"10.{a}." not in used:
            return f"10.{a}.{b}"
    raise AssertionError("no free 10.x subnet for the test namespaces")


class NetnsLab:
    """A bridge with `n` network namespaces on it: 10.X.Y.1 on the bridge, 10.X.Y.2.. in the namespaces.

    Names are unique per test run; `close()` kills what runs in each namespace and deletes everything."""

    def __init__(self, n: int):
        tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.bridge = f"sxbr{tag}"
        self.namespaces = [f"sx{tag}h{i}" for i in range(1, n + 1)]
        self.veths = [f"sxv{tag}h{i}" for i in range(1, n + 1)]
        net = free_subnet()
        self.gateway = f"{net}.1"
        self.addresses = [f"{net}.{i + 1}" for i in range(1, n + 1)]

    def open(self) -> "NetnsLab":
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for ns, veth, addr in zip(self.namespaces, self.veths, self.addresses):
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "link", "set", veth, "master", self.bridge)
            run("ip", "link", "set", veth, "up")
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def close(self) -> None:
        for ns in self.namespaces:
            for _ in range(50):  # `ip netns del` does not free a namespace while anything runs in it
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                time.sleep(0.1)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for veth in self.veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
