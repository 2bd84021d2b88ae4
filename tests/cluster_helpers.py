"""Real servers for the cluster tests: a Ray cluster of several nodes on loopback, an MLflow
tracking server, a database of their own on the PostgreSQL server at 127.0.0.1:5432, and the
sweep CLI as a driver process.

Everything binds to 127.0.0.1 on free ports, and each helper stops exactly what it started:
Popen'd processes by their own process group, Ray nodes through `Cluster.remove_node`,
databases by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import requests
from psycopg2 import sql
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: mlflow, ray


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
    """Poll `condition` until it returns something truthy; its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `process` leads (it was started with start_new_session),
    then SIGKILL what is left of it. Only that group: never anything found by name."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while its children (server workers, Ray processes) live on.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)


class MlflowServer:
    """`mlflow server` on 127.0.0.1: start, kill (a crash), restart. Its store is a sqlite file
    in `root`, or `backend_store_uri` (a PostgreSQL database: `postgres_database`)."""

    def __init__(self, root: Path, port: int | None = None, backend_store_uri: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.db = self.root / "mlflow.db"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.db}"
        self.artifacts = self.root / "artifacts"
        self.log = self.root / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        command = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            str(self.artifacts),
        ]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # the server and its workers form one group
            )
        try:
            wait_for(self._healthy, timeout, f"the MLflow server on {self.uri}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"MLflow server did not start:\n{self.tail()}") from None

    def _healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"MLflow server exited:\n{self.tail()}")
        try:
            return requests.get(f"{self.uri}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """A crash: SIGKILL the server's process group, and wait until the port refuses."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        wait_for(lambda: not self._answers(), 30, "the killed MLflow server to stop answering")

    def _answers(self) -> bool:
        try:
            requests.get(f"{self.uri}/health", timeout=2)
        except requests.RequestException:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextlib.contextmanager
def mlflow_server(root: Path, backend_store_uri: str | None = None) -> Iterator[MlflowServer]:
    server = MlflowServer(root, backend_store_uri=backend_store_uri)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def loopback_ray_env() -> Iterator[Path]:
    """Environment for a Ray of our own on 127.0.0.1, for the cluster and for every driver
    started from this process (they inherit os.environ); restored on exit.

    - RAY_TMPDIR: a private, short (Ray's unix sockets live under it) folder for the session
      folders and the `ray_current_cluster` address file that `Cluster` writes and deletes,
      apart from any other Ray on the machine.
    - RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's single-machine mode. Otherwise every process
      that joins (a driver, the job server's agent) rewrites a 127.0.0.1 address into the
      machine's outward IP, where nothing listens since the nodes bind to loopback only.
    """
    folder = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    overrides = {"RAY_TMPDIR": str(folder), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    previous = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield folder
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # Node processes may still be flushing their logs for a moment after they die.
        for _ in range(10):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                break
            time.sleep(1)


@contextlib.contextmanager
def ray_cluster(head: dict[str, Any], workers: list[dict[str, Any]] = ()) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster` on 127.0.0.1: a head with `head` node args and one node
    per entry of `workers`. This process starts the nodes but does not connect to them; they
    are removed (their processes killed) on exit, whatever happened."""
    from ray.cluster_utils import Cluster

    loopback = {"node_ip_address": "127.0.0.1"}
    # Ray's fixed default (52365) would clash with any other Ray head on the machine.
    head = {"include_dashboard": False, "dashboard_agent_listen_port": free_port()} | head
    with loopback_ray_env() as tmp:
        cluster = None
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args=loopback | head,
                shutdown_at_exit=True,
            )
            for index, args in enumerate(workers, 1):
                # Each node its own temp folder, as on its own machine: nodes sharing one
                # session folder share runtime_resources/, and a node whose trials end
                # garbage-collects the job's working_dir copy while the job still runs in it.
                own = {"temp_dir": str(tmp / f"node{index}")}
                cluster.add_node(**(loopback | own | args))
            cluster.wait_for_nodes(timeout=120)
            yield cluster
        finally:
            if cluster is not None:
                cluster.shutdown()


def sweep_env() -> dict[str, str]:
    return os.environ | {"PYTHONUNBUFFERED": "1"}


def start_driver(command: list[str], log: Path) -> subprocess.Popen:
    """The sweep CLI as its own process group, output to `log`."""
    with log.open("w") as handle:
        return subprocess.Popen(
            command,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=sweep_env(),
            start_new_session=True,
        )


def finish_driver(driver: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    """Wait for the driver; its exit code and output. Killed (its group) on timeout."""
    try:
        code = driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(driver)
        raise AssertionError(f"sweep still running after {timeout:.0f} s:\n{tail(log)}") from None
    return code, log.read_text(errors="replace")


def tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


# ---- Ray Tune's trial folders ------------------------------------------------------------


def trial_results(tune_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """trial id -> its reported results (result.json rows, in order), from the sweep's storage."""
    results = {}
    for path in sorted(Path(tune_dir).glob("*/result.json")):
        rows = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                rows.append(json.loads(line))
        if rows:
            results[rows[0]["trial_id"]] = rows
    return results


def trial_checkpoints(tune_dir: Path) -> dict[str, list[Path]]:
    """trial folder name -> its checkpoint folders in the sweep's storage."""
    return {
        folder.name: sorted(folder.glob("checkpoint_*"))
        for folder in Path(tune_dir).iterdir()
        if folder.is_dir() and (folder / "result.json").exists()
    }


# ---- PostgreSQL: the server on 127.0.0.1:5432, a database of our own per test -------------

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _postgres_admin(statement: sql.Composable | None = None) -> None:
    """Run `statement` (psycopg2.sql) on the server's `postgres` database, outside a transaction
    (CREATE and DROP DATABASE refuse one); none: only connect."""
    connection = psycopg2.connect(dbname="postgres", connect_timeout=3, **POSTGRES)
    try:
        connection.autocommit = True
        if statement is not None:
            with connection.cursor() as cursor:
                cursor.execute(statement)
    finally:
        connection.close()


def postgres_unavailable() -> str | None:
    """Why PostgreSQL on 127.0.0.1:5432 (user postgres) cannot serve the tests; None if it can."""
    try:
        _postgres_admin()
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f"{POSTGRES['host']}:{POSTGRES['port']} (user {POSTGRES['user']})"
        return f"PostgreSQL on {where} is not available ({first})"
    return None


@contextlib.contextmanager
def postgres_database(password: str | None = None) -> Iterator[str]:
    """A new empty database `emovae_test_<hex>`; its SQLAlchemy URL with the psycopg2 driver
    (the one docker/compose.yaml gives MLflow), carrying `password` if given. Dropped on exit
    together with any connection a test left open to it."""
    name = f"emovae_test_{uuid.uuid4().hex}"
    _postgres_admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    user = f"{POSTGRES['user']}:{password}" if password else POSTGRES["user"]
    try:
        yield f"postgresql+psycopg2://{user}@{POSTGRES['host']}:{POSTGRES['port']}/{name}"
    finally:
        _postgres_admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def postgres_rows(url: str, statement: str) -> list[tuple]:
    """The rows `statement` returns (none for an UPDATE, committed), read with psycopg2 straight
    from the database behind the SQLAlchemy `url`, not through MLflow."""
    parsed = make_url(url)
    connection = psycopg2.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
    )
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()
