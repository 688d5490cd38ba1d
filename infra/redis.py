"""A local Redis server: Debian's redis-server, daemonized on loopback with an
append-only file under `home/redis` (the state store must survive restarts).

Credentials in REDIS_URL are honoured: the server is started with an ACL that
lets only that user in, with that password (the default user when the URL names
none), from a configuration file only its owner can read, which holds the
password's SHA-256, never the password.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import redis

from tierflow.infra.errors import CredentialsRefused, ServiceError, refuse_remote
from tierflow.infra.process import SAFE_NAME, alive, file_lock, terminate, write_private
from tierflow.pipeline.config.settings import Settings

# `tierflow up --redis-cluster`: this many masters, each on its own port from REDIS_URL's on.
CLUSTER_NODES = 3
CLUSTER_DIR = "redis-cluster"


def is_up(settings: Settings, timeout: float = 2.0) -> bool:
    """True when Redis answers PING with the URL's credentials. A server that answers
    but refuses them raises `CredentialsRefused`: starting another would not help."""
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        return bool(client.ping())
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        given = urlsplit(settings.redis_url).password is not None
        reason = str(exc) if given else "the server requires a password and the URL has none"
        raise CredentialsRefused("Redis", settings.redis_display(), "REDIS_URL", reason) from None
    except redis.RedisError:
        return False
    finally:
        client.close()


def start(settings: Settings, timeout: float = 30.0) -> str:
    """Make sure Redis answers at `settings.redis_url`: "reused" if it already did, else
    "started" after launching a local daemon and waiting for PING."""
    if is_up(settings):
        return "reused"
    if not settings.redis_is_local:
        raise refuse_remote("Redis", settings.redis_display(), "URL")
    root = settings.home / "redis"
    root.mkdir(parents=True, exist_ok=True)
    # Concurrent starts would race for the port and the pid file.
    with file_lock(root / "start.lock"):
        if is_up(settings):
            return "reused"
        server = _ensure_installed()
        parts = urlsplit(settings.redis_url)
        if parts.scheme != "redis":
            raise ServiceError(f"a local Redis is started without TLS: use redis://, not {parts.scheme}://")
        _launch(server, root, parts.port or 6379, _write_config(root, parts.username, parts.password))
        _wait(settings.redis_url, settings.redis_display(), root / "redis.log", timeout)
    return "started"


def stop(settings: Settings, timeout: float = 15.0) -> str:
    """Stop the server, or the cluster's nodes, this home started (pid files), never a
    system one we merely reused."""
    pidfiles = [settings.home / "redis" / "redis.pid", *sorted((settings.home / CLUSTER_DIR).glob("*/redis.pid"))]
    pids = [(pidfile, pid) for pidfile in pidfiles if (pid := _our_pid(pidfile)) is not None]
    for pidfile, pid in pids:
        terminate(pid, timeout)  # redis flushes the append-only file and exits
        pidfile.unlink(missing_ok=True)  # redis removes it on a clean exit, not after SIGKILL
    return "stopped" if pids else "not running"


def cluster_is_up(settings: Settings, timeout: float = 2.0) -> bool:
    """True when the node at `settings.redis_url` is part of a cluster that serves every slot."""
    if not is_up(settings, timeout):
        return False
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, decode_responses=True)
    try:
        return client.cluster("info").get("cluster_state") == "ok"
    except redis.RedisError:
        return False  # a standalone server: "ERR This instance has cluster support disabled"
    finally:
        client.close()


def start_cluster(settings: Settings, nodes: int = CLUSTER_NODES, timeout: float = 30.0) -> str:
    """Make sure a Redis Cluster of `nodes` masters answers at `settings.redis_url`: "reused"
    if it already did, else "started" after launching local nodes on the URL's port and
    the `nodes - 1` ports after it, and assigning the slots (`redis-cli --cluster create`)."""
    if cluster_is_up(settings):
        return "reused"
    if not settings.redis_is_local:
        raise refuse_remote("Redis", settings.redis_display(), "URL")
    parts = urlsplit(settings.redis_url)
    if parts.scheme != "redis":
        raise ServiceError(f"a local Redis is started without TLS: use redis://, not {parts.scheme}://")
    if parts.path.strip("/") not in ("", "0"):
        raise ServiceError("Redis Cluster has database 0 only: REDIS_URL must name /0 or no database")
    root = settings.home / CLUSTER_DIR
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / "start.lock"):
        if cluster_is_up(settings):
            return "reused"
        server = _ensure_installed()
        ports = [(parts.port or 6379) + n for n in range(nodes)]
        for port in ports:
            node = root / str(port)
            node.mkdir(exist_ok=True)
            conf = _write_config(node, parts.username, parts.password)
            if not _our_pid(node / "redis.pid"):
                _launch(server, node, port, conf, "--cluster-enabled", "yes",
                        "--cluster-config-file", str(node / "nodes.conf"))
            _wait(_node_url(parts, port), f"127.0.0.1:{port}", node / "redis.log", timeout)
        if not cluster_is_up(settings):
            _create_cluster(parts, ports, timeout)
    return "started"


def _node_url(parts: SplitResult, port: int) -> str:
    """The URL's credentials and host, another node's port."""
    credentials = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{credentials + '@' if credentials else ''}{parts.hostname}:{port}").geturl()


def _create_cluster(parts: SplitResult, ports: list[int], timeout: float) -> None:
    """Slots spread over the nodes, then wait until every node agrees the cluster is ok.
    Nodes that already know each other (restarted from their nodes.conf) need no create."""
    env = dict(os.environ)
    if parts.password is not None:
        env["REDISCLI_AUTH"] = unquote(parts.password)  # never on the command line
    first = redis.Redis.from_url(_node_url(parts, ports[0]), decode_responses=True)
    try:
        if int(first.cluster("info").get("cluster_known_nodes", 1)) < len(ports):
            user = ["--user", unquote(parts.username)] if parts.username else []
            result = subprocess.run(
                ["redis-cli", *user, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, env=env,
            )
            if result.returncode != 0:
                raise ServiceError(f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}")
    finally:
        first.close()
    deadline = time.monotonic() + timeout
    for port in ports:
        client = redis.Redis.from_url(_node_url(parts, port), decode_responses=True)
        try:
            while client.cluster("info").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    raise ServiceError(f"the Redis Cluster node on port {port} did not reach cluster_state:ok")
                time.sleep(0.2)
        finally:
            client.close()


def _launch(server: str, root: Path, port: int, conf: Path, *extra: str) -> None:
    """Start a daemonized redis-server with its files under `root`."""
    # --daemonize makes redis-server fork and write the pid file itself; the command
    # returns once the daemon has been spawned, so a non-zero exit is a config error.
    result = subprocess.run(
        [
            server,
            str(conf),
            "--daemonize", "yes",
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(root),
            "--pidfile", str(root / "redis.pid"),
            "--logfile", str(root / "redis.log"),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            *extra,
        ],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode != 0:
        raise ServiceError(f"redis-server failed to start:\n{result.stdout}{result.stderr}")


def _wait(url: str, display: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(url):
        if time.monotonic() > deadline:
            raise ServiceError(
                f"Redis did not answer PING at {display} within {timeout:.0f} s; log tail ({log}):\n{_log_tail(log)}"
            )
        time.sleep(0.2)


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _write_config(root: Path, username: str | None, password: str | None) -> Path:
    """The server's configuration file: an ACL for the URL's user, or nothing to add
    when the URL carries no password."""
    lines = []
    if password is not None:
        user = unquote(username) if username else "default"
        if not SAFE_NAME.fullmatch(user):
            raise ServiceError("REDIS_URL: a local Redis user name has letters, digits, '.', '_' and '-' only")
        digest = hashlib.sha256(unquote(password).encode()).hexdigest()
        if user != "default":
            lines.append("user default off")  # nobody gets in without the URL's user
        lines.append(f"user {user} reset on #{digest} ~* &* +@all")
    elif username:
        raise ServiceError("REDIS_URL names a user without a password")
    conf = root / "redis.conf"
    # Rewritten on every start, so changed credentials take effect.
    write_private(conf, "".join(line + "\n" for line in lines))
    return conf


def _ensure_installed() -> str:
    server = shutil.which("redis-server")
    if server is not None:
        return server
    print("redis: redis-server not found; installing Debian's redis-server package (apt-get)")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        print("redis: $", " ".join(cmd))
        subprocess.run(cmd, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError("apt-get installed redis-server but it is not on PATH")
    return server


def _our_pid(pidfile: Path) -> int | None:
    """The pid in the pid file if that process is alive and still a redis-server
    (a stale pid file may point at a recycled pid)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"redis-server" in cmdline and alive(pid) else None


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
