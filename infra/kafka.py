"""A local single-node Kafka (KRaft, combined broker + controller) run straight from
Maven Central jars, so neither Docker nor a Kafka download site is needed."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from tierflow.infra.errors import CredentialsRefused, ServiceError, refuse_remote
from tierflow.infra.process import SAFE_NAME, alive, file_lock, terminate, write_private
from tierflow.pipeline.config.settings import KafkaSettings, Settings

KAFKA_VERSION = "4.4.0"  # keep in step with kafka.version in kafka-pom.xml
POM = Path(__file__).with_name("kafka-pom.xml")
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
HEAP = "-Xmx512m"
NODE_ID = 1
# Local clusters are for trying replication on one machine, not for capacity.
MAX_LOCAL_BROKERS = 5
# How often a probe looks for an authentication failure while it waits for metadata.
AUTH_POLL_S = 0.5
# Longest start-up wait while a broker is still making progress (loading its logs).
LOADING_CAP_S = 900.0

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
# Per-request logging and the full config dumps (hundreds of lines for every client
# and component) drown what matters; server.properties is on disk next to the log.
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
"""


def ensure_jars(home: Path) -> Path:
    """Broker jars in `home/cache/kafka-<version>/libs`, fetched by Maven on first use."""
    cache = home / "cache" / f"kafka-{KAFKA_VERSION}"
    libs, marker = cache / "libs", cache / "complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("Maven (mvn) is needed to fetch the Kafka jars; install it first")
    # A previous run may have been interrupted half way: start from an empty directory.
    shutil.rmtree(libs, ignore_errors=True)
    libs.mkdir(parents=True)
    print(f"kafka: downloading Kafka {KAFKA_VERSION} jars with Maven into {libs} (first run only)")
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(
            f"mvn failed ({result.returncode}):\n{_tail(result.stdout + result.stderr)}"
        )
    marker.write_text(KAFKA_VERSION + "\n")
    return libs


def is_up(settings: Settings, timeout: float = 3.0) -> bool:
    """True when the bootstrap servers answer a metadata request with at least one broker.
    Brokers that refuse the SASL credentials raise `CredentialsRefused`: starting
    another one would not help."""
    if settings.kafka.is_local and not _port_open(*_host_port(settings)):
        return False  # skip the admin client: it would only log connection-refused noise
    refused: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.code() == KafkaError._AUTHENTICATION:
            refused.append(err)

    admin = AdminClient(settings.kafka.confluent(log_level=0, error_cb=on_error))
    deadline = time.monotonic() + timeout
    # Short rounds: a refusal arrives through the error callback, well before a long
    # metadata request would give up.
    while True:
        try:
            return bool(admin.list_topics(timeout=min(AUTH_POLL_S, timeout)).brokers)
        except KafkaException:
            admin.poll(0)  # serves the error callback
        if refused:
            # "<listener>/bootstrap: SASL authentication error: <reason> (after ...)": the reason.
            reason = refused[0].str().rsplit("error: ", 1)[-1].split(" (after ", 1)[0]
            where = "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD"
            raise CredentialsRefused("Kafka", settings.kafka.bootstrap, where, reason)
        if time.monotonic() >= deadline:
            return False


@dataclass(frozen=True)
class Node:
    """One local KRaft process (broker and controller): clients on `port`, the
    controller quorum on `port + 1`, its files under `root`."""

    node_id: int
    port: int
    root: Path

    @property
    def controller_port(self) -> int:
        return self.port + 1


def nodes(settings: Settings, brokers: int = 1) -> list[Node]:
    """The nodes of a local Kafka of `brokers` nodes at the bootstrap's port: one node
    keeps the home's `kafka/` folder; a cluster's node i listens on port + 2i."""
    port = _host_port(settings)[1]
    if brokers == 1:
        return [Node(NODE_ID, port, settings.home / "kafka")]
    return [Node(i + 1, port + 2 * i, settings.home / "kafka-cluster" / f"node-{i + 1}") for i in range(brokers)]


def start(settings: Settings, timeout: float = 90.0, brokers: int = 1) -> str:
    """Make sure Kafka answers at the bootstrap: "reused" if it already did, else
    "started" after launching `brokers` local nodes (3 for a cluster that survives a
    broker's loss) and waiting until every one serves metadata and groups."""
    if not 1 <= brokers <= MAX_LOCAL_BROKERS:
        raise ServiceError(f"a local Kafka has 1 to {MAX_LOCAL_BROKERS} brokers, not {brokers}")
    if is_up(settings):
        _check_size(settings, brokers)
        return "reused"
    if not settings.kafka.is_local:
        raise refuse_remote("Kafka", settings.kafka.bootstrap, "bootstrap")
    members = nodes(settings, brokers)
    lock_dir = members[0].root.parent if brokers > 1 else members[0].root
    lock_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_dir / "start.lock"):
        # Another process may have started it while we waited for the lock.
        if is_up(settings) or any(_our_pid(node.root) is not None for node in members):
            _wait_ready(settings, members, timeout)
            return "reused"
        for node in members:
            if _port_open("127.0.0.1", node.port):
                raise ServiceError(
                    f"something listens at 127.0.0.1:{node.port} but does not answer as Kafka"
                    f" over {settings.kafka.security_protocol} (KAFKA_SECURITY_PROTOCOL)"
                )
        libs = ensure_jars(settings.home)
        cluster_id = _cluster_id()
        for node in members:
            node.root.mkdir(parents=True, exist_ok=True)
            props = _write_config(node, members, settings.kafka)
            _format_storage(node.root, libs, props, cluster_id)
            _launch(node, libs, props)
        _wait_ready(settings, members, timeout)
    return "started"


def _launch(node: Node, libs: Path, props: Path) -> None:
    log = node.root / "kafka.log"
    _rotate(log)
    # Launched through sh so the broker is not our child: it outlives this process
    # (new session, reparented) without ever lingering as our zombie.
    launcher = subprocess.run(
        ["/bin/sh", "-c", 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!', "sh", str(log),
         *_java(libs, node.root), MAIN_CLASS, str(props)],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
        cwd=node.root,
    )
    (node.root / "kafka.pid").write_text(launcher.stdout.strip() + "\n")


def _check_size(settings: Settings, brokers: int) -> None:
    """A running Kafka with fewer brokers than asked for cannot hold the replicas."""
    if brokers == 1:
        return
    found = _brokers(settings, timeout=10.0)
    if found < brokers:
        raise ServiceError(f"the Kafka at {settings.kafka.bootstrap} has {found} broker(s), not {brokers};"
                           " stop it first (tierflow down)")


def stop(settings: Settings, timeout: float = 30.0) -> str:
    """Stop the brokers this home started (pid files), single or cluster: SIGTERM, then
    SIGKILL after `timeout`."""
    roots = [settings.home / "kafka", *sorted((settings.home / "kafka-cluster").glob("node-*"))]
    stopped = False
    for root in roots:
        pid = _our_pid(root)
        if pid is not None:
            terminate(pid, timeout)  # the broker does a controlled shutdown on SIGTERM
            stopped = True
        (root / "kafka.pid").unlink(missing_ok=True)
    return "stopped" if stopped else "not running"


def _host_port(settings: Settings) -> tuple[str, int]:
    first = settings.kafka.bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 9092)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _write_config(node: Node, members: list[Node], kafka: KafkaSettings) -> Path:
    data = node.root / "data"
    props = node.root / "server.properties"
    voters = ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in members)
    # Internal topics as replicated as the cluster allows; writes need a majority in sync.
    replicas, in_sync = len(members), len(members) // 2 + 1
    # Rewritten on every start so a changed port or password in the settings takes effect.
    text = "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={voters}",
            *_listeners(kafka, node.port),
            "controller.listener.names=CONTROLLER",
            f"log.dirs={data}",
            f"offsets.topic.replication.factor={replicas}",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={in_sync}",
            f"share.coordinator.state.topic.replication.factor={replicas}",
            f"share.coordinator.state.topic.min.isr={in_sync}",
            f"min.insync.replicas={in_sync}",
            # Consumers join at once instead of waiting 3 s for more members.
            "group.initial.rebalance.delay.ms=0",
            # Topics are created explicitly with the partition count the pipeline expects.
            "auto.create.topics.enable=false",
            "",
        ]
    )
    write_private(props, text)  # it may hold the SASL password
    (node.root / "log4j2.properties").write_text(_LOG4J2)
    return props


def _listeners(kafka: KafkaSettings, port: int) -> list[str]:
    """The listener lines: PLAINTEXT, or SASL_PLAINTEXT with PLAIN for the configured
    user on both the client and the controller listener (nothing answers without it)."""
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]
    if protocol != "SASL_PLAINTEXT":
        raise ServiceError(
            f"a local Kafka is started with PLAINTEXT or SASL_PLAINTEXT only, not {protocol}"
            " (KAFKA_SECURITY_PROTOCOL); run a broker with TLS yourself"
        )
    user, password = _plain_credentials(kafka)
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required"
        f' username="{user}" password="{password}" user_{user}="{password}";'
    )
    return [
        f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}",
        f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms=PLAIN",
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        "sasl.mechanism.controller.protocol=PLAIN",
        f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
        f"listener.name.controller.plain.sasl.jaas.config={jaas}",
    ]


def _plain_credentials(kafka: KafkaSettings) -> tuple[str, str]:
    if (kafka.sasl_mechanism or "PLAIN").upper() != "PLAIN":
        raise ServiceError(
            f"a local Kafka supports the SASL mechanism PLAIN only, not {kafka.sasl_mechanism}"
            " (KAFKA_SASL_MECHANISM)"
        )
    user, password = kafka.sasl_username, kafka.sasl_password
    if not user or not password:
        raise ServiceError(
            "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_USERNAME and"
            " KAFKA_SASL_PASSWORD to start a local Kafka"
        )
    # The user names a property (user_<name>) and both sit in a quoted JAAS string in a
    # properties file, where these characters would need two layers of escaping.
    if not SAFE_NAME.fullmatch(user):
        raise ServiceError("KAFKA_SASL_USERNAME: letters, digits, '.', '_' and '-' only for a local Kafka")
    if any(c in password for c in '"\\\n\r'):
        raise ServiceError("KAFKA_SASL_PASSWORD: no quote, backslash or line break for a local Kafka")
    return user, password


def _format_storage(root: Path, libs: Path, props: Path, cluster_id: str) -> None:
    """Format the KRaft log directory once; a formatted one has meta.properties."""
    if (root / "data" / "meta.properties").exists():
        return
    cmd = [*_java(libs, root), STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(props)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=root)
    if result.returncode != 0:
        raise ServiceError(
            f"formatting Kafka storage failed ({result.returncode}):\n"
            f"{_tail(result.stdout + result.stderr)}"
        )


def _cluster_id() -> str:
    # Kafka's Uuid text form: URL-safe base64 of 16 random bytes, unpadded; like
    # Uuid.randomUuid, avoid a leading "-" that command lines would take for an option.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _java(libs: Path, root: Path) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise ServiceError("Java 17+ is needed to run Kafka; install a JRE first")
    return [
        java,
        HEAP,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
    ]


def _wait_ready(settings: Settings, members: list[Node], timeout: float) -> None:
    """Wait until every broker serves metadata and groups. A broker reopening a big log
    directory (thousands of partitions) can take minutes, so `timeout` counts time
    without progress: while a broker's log keeps growing the wait goes on, up to
    `LOADING_CAP_S` in all."""
    started = time.monotonic()
    deadline = started + timeout
    sizes = {node.node_id: _log_size(node.root) for node in members}
    while True:
        if is_up(settings, timeout=2.0) and _brokers(settings) >= len(members) and _groups_ready(settings):
            return
        for node in members:
            if _our_pid(node.root) is None:
                raise ServiceError(f"Kafka exited during startup; log tail:\n{_log_tail(node.root)}")
        now = time.monotonic()
        grown = {node.node_id: _log_size(node.root) for node in members}
        if grown != sizes and now - started < LOADING_CAP_S:
            sizes, deadline = grown, max(deadline, now + timeout)
        if now >= deadline:
            break
        time.sleep(0.5)
    raise ServiceError(
        f"Kafka did not serve metadata at {settings.kafka.bootstrap} within {now - started:.0f} s; "
        f"log tail ({members[0].root / 'kafka.log'}):\n{_log_tail(members[0].root)}"
    )


def _log_size(root: Path) -> int:
    try:
        return (root / "kafka.log").stat().st_size
    except OSError:
        return 0


def _brokers(settings: Settings, timeout: float = 2.0) -> int:
    """Brokers in the cluster's metadata; 0 when it cannot be read."""
    try:
        return len(AdminClient(settings.kafka.confluent(log_level=0)).list_topics(timeout=timeout).brokers)
    except KafkaException:
        return 0


def _groups_ready(settings: Settings) -> bool:
    """A fresh broker serves metadata before its group coordinator (the offsets topic)
    is loaded; consumers committing offsets then fail, so wait for that too."""
    admin = AdminClient(settings.kafka.confluent(log_level=0))
    try:
        admin.describe_consumer_groups(["tierflow-readiness"])["tierflow-readiness"].result(timeout=2.0)
    except (KafkaException, TimeoutError):
        # a coordinator still loading may not answer within the wait at all
        return False
    return True


def _our_pid(root: Path) -> int | None:
    """The pid in our pid file if that process is alive and still a Kafka broker
    (a stale pid file may point at a recycled pid)."""
    try:
        pid = int((root / "kafka.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if MAIN_CLASS.encode() in cmdline.split(b"\0") and alive(pid) else None


def _rotate(log: Path) -> None:
    """Keep the previous run's log (it may hold why that broker died) as kafka.log.1."""
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))


def _log_tail(root: Path) -> str:
    """The log's last lines, preceded by its errors: on a failed start the cause
    (say, a port in use) is usually buried under the shutdown that followed."""
    try:
        text = (root / "kafka.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    errors = [
        line
        for line in text.splitlines()
        if " ERROR " in line or " FATAL " in line or line.startswith("Caused by:")
    ]
    head = "errors:\n" + "\n".join(dict.fromkeys(errors[-12:])) + "\n...\n" if errors else ""
    return head + _tail(text, 20)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
