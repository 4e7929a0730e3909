"""SSH to remote instances with host keys checked against known_hosts (never accepted silently).

Fabric's Connection accepts unknown host keys by default (paramiko's AutoAddPolicy);
here the policy is RejectPolicy and the keys are those of the configured
known_hosts file (conf/hosts.yaml ``ssh.known_hosts``, SIMX_KNOWN_HOSTS).  A new
host's key is accepted only by `fab NAME.trust`, which shows its fingerprint.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
from pathlib import Path

import paramiko
from fabric import Connection

from .control import OpsError
from .hosts import Instance, Ssh


def host_entry(instance: Instance) -> str:
    """How known_hosts names the host (OpenSSH's `[host]:port` form for a port other than 22)."""
    return instance.host if instance.port == 22 else f"[{instance.host}]:{instance.port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint: `SHA256:` + unpadded base64 of the key's hash."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def connect(instance: Instance, ssh: Ssh) -> Connection:
    """An open Connection; raises OpsError with the reason when the host cannot be reached or trusted."""
    kwargs = {"banner_timeout": ssh.connect_timeout, "auth_timeout": ssh.connect_timeout}
    if instance.key:  # else ~/.ssh/config and the usual keys apply
        kwargs.update(key_filename=str(Path(instance.key).expanduser()), look_for_keys=False, allow_agent=False)
    conn = Connection(instance.host, user=instance.user or None, port=instance.port,
                      connect_timeout=ssh.connect_timeout, connect_kwargs=kwargs)
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    known = ssh.known_hosts_path
    if known.exists():
        conn.client.get_host_keys().load(str(known))
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise OpsError(f"the host key of {host_entry(instance)} is not the one in {known} "
                       f"({fingerprint(exc.key)}): if the host was reinstalled, remove its line and "
                       f"run `fab {instance.name}.trust`") from None
    except paramiko.SSHException as exc:
        if "known_hosts" in str(exc):
            raise OpsError(f"{host_entry(instance)} is not in {known}: check its key and run "
                           f"`fab {instance.name}.trust`") from None
        raise OpsError(f"ssh {host_entry(instance)}: {exc}") from None
    except (OSError, EOFError) as exc:  # refused, unreachable, timed out
        raise OpsError(f"cannot reach {host_entry(instance)} over ssh: {exc or type(exc).__name__}") from None
    return conn


def scan(instance: Instance, ssh: Ssh) -> paramiko.PKey:
    """The host key the server presents (no authentication)."""
    try:
        sock = socket.create_connection((instance.host, instance.port), timeout=ssh.connect_timeout)
    except OSError as exc:
        raise OpsError(f"cannot reach {host_entry(instance)}: {exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=ssh.connect_timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise OpsError(f"{host_entry(instance)} did not complete an SSH key exchange: {exc}") from None
    finally:
        transport.close()


def trust(instance: Instance, ssh: Ssh, expected: str | None, ask=input, out=print) -> bool:
    """Add the host's key to known_hosts: when it has `expected` fingerprint, or the operator says yes."""
    key = scan(instance, ssh)
    found = fingerprint(key)
    entry = host_entry(instance)
    known = ssh.known_hosts_path
    keys = paramiko.HostKeys()
    if known.exists():
        keys.load(str(known))
    if keys.check(entry, key):
        out(f"{entry}: already trusted ({key.get_name()} {found})")
        return True
    out(f"{entry} presents a {key.get_name()} key with fingerprint {found}")
    if expected is not None:
        if expected.strip() != found:
            raise OpsError(f"{entry}: fingerprint {found} is not the expected {expected.strip()}: not trusted")
    else:
        try:
            answer = ask("Is this the host's key (compare with `ssh-keygen -lf` on the host)? Type yes to trust it: ")
        except EOFError:   # no terminal (a script, CI): nobody can say yes
            raise OpsError(f"{entry}: no terminal to ask whether {found} is the host's key; compare it with "
                           f"`ssh-keygen -lf` on the host and run `fab {instance.name}.trust --fingerprint {found}`") \
                from None
        if answer.strip().lower() != "yes":
            out("not trusted")
            return False
    if entry in keys and key.get_name() in keys[entry]:
        raise OpsError(f"{known} holds another {key.get_name()} key for {entry}: remove that line first "
                       f"(ssh-keygen -R '{entry}' -f {known})")
    known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f"{entry} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(known, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open(fd, "a", encoding="ascii") as f:
        f.write(line)
    out(f"{entry}: trusted, added to {known}")
    return True
