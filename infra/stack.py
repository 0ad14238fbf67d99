"""The production stack as processes: PostgreSQL, Redis, an MLflow tracking server, Airflow on PostgreSQL.

There is no container engine on this project's machines, so the stack is a set of
processes on 127.0.0.1 (default ports for PostgreSQL and Redis, a free port for
MLflow), each started only if it is not up already. Everything is configured by
environment variables; nothing secret is written to a file:

    RETRAIN_PG_HOST (127.0.0.1)  RETRAIN_PG_PORT (5432)  RETRAIN_PG_USER (postgres)
    RETRAIN_PG_PASSWORD (empty: trust/peer auth, or use ~/.pgpass / PGPASSWORD)
    RETRAIN_REDIS_HOST (127.0.0.1)  RETRAIN_REDIS_PORT (6379)  RETRAIN_BIND_HOST (127.0.0.1)
    RETRAIN_PG_START / RETRAIN_REDIS_START: commands that start a server that is down.

A ``Stack`` names one set of databases (``<prefix>_airflow``, ``<prefix>_mlflow``,
``<prefix>_feast``) and one Redis db index; ``env()`` gives the variables that point
the pipeline, Feast, MLflow and Airflow at them.

Example:
    >>> stack = Stack(prefix="recsys", home=Path(".retrain/prod"))
    >>> stack.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    'postgresql+psycopg://postgres@127.0.0.1:5432/recsys_airflow'
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import socket
import subprocess  # nosec B404  # starts known server binaries with argument lists
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Servers:
    """Where PostgreSQL and Redis listen, and what binds the servers this module starts."""

    pg_host: str = field(default_factory=lambda: _env("RETRAIN_PG_HOST", "127.0.0.1"))
    pg_port: int = field(default_factory=lambda: int(_env("RETRAIN_PG_PORT", "5432")))
    pg_user: str = field(default_factory=lambda: _env("RETRAIN_PG_USER", "postgres"))
    redis_host: str = field(default_factory=lambda: _env("RETRAIN_REDIS_HOST", "127.0.0.1"))
    redis_port: int = field(default_factory=lambda: int(_env("RETRAIN_REDIS_PORT", "6379")))
    bind_host: str = field(default_factory=lambda: _env("RETRAIN_BIND_HOST", "127.0.0.1"))

    @property
    def pg_password(self) -> str:
        """Read from the environment on use, never stored in a config file or printed."""
        return os.environ.get("RETRAIN_PG_PASSWORD", "")

    def pg_url(self, db: str, driver: str = "postgresql", password: bool = True) -> str:
        """The database URL; ``password=False`` leaves the password out (libpq then reads ``PGPASSWORD``)."""
        secret = f":{quote(self.pg_password, safe='')}" if self.pg_password and password else ""
        return f"{driver}://{quote(self.pg_user, safe='')}{secret}@{self.pg_host}:{self.pg_port}/{db}"

    def connect(self, db: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host=self.pg_host, port=self.pg_port, user=self.pg_user, password=self.pg_password or None,
            dbname=db, connect_timeout=3, autocommit=True,
        )

    def pg_up(self) -> bool:
        import psycopg

        try:
            self.connect().close()
            return True
        except psycopg.OperationalError:
            return False

    def redis_up(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=self.redis_host, port=self.redis_port, socket_timeout=2).ping())
        except redis.exceptions.ConnectionError:
            return False

    def ensure(self) -> None:
        """Starts PostgreSQL and Redis if they are down (the machine's own commands); raises if they stay down."""
        _ensure("PostgreSQL", self.pg_up, _env("RETRAIN_PG_START", PG_START))
        _ensure("Redis", self.redis_up, _env("RETRAIN_REDIS_START", REDIS_START))


def _ensure(name: str, up, start: str) -> None:
    if up():
        return
    log.info("%s is down; starting it: %s", name, start)
    # The start command is the operator's (an environment variable) or the machine's documented one.
    subprocess.run(start, shell=True, capture_output=True, text=True, timeout=120)  # nosec B602
    for _ in range(40):
        if up():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{name} is down and `{start}` did not start it")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Stack:
    """One deployment's databases, Redis index, home folder and MLflow port."""

    prefix: str
    home: Path
    redis_db: int = 9
    mlflow_port: int = 5000
    servers: Servers = field(default_factory=Servers)

    def __post_init__(self) -> None:
        if not NAME.match(self.prefix):
            raise ValueError(f"stack prefix {self.prefix!r}: lowercase letters, digits and _ only")

    def db(self, part: str) -> str:
        return f"{self.prefix}_{part}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.servers.bind_host}:{self.mlflow_port}"

    @property
    def feature_repo(self) -> Path:
        return self.home / "features"

    @property
    def broker_db(self) -> int:
        """Redis db index of the Celery broker: the one after the Feast online store's."""
        return self.redis_db + 1

    def env(self, executor: str = "local") -> dict[str, str]:
        """Variables that point the pipeline and its libraries at this stack (no secret values in them).

        ``executor="celery"``: CeleryExecutor with the Redis broker (db :attr:`broker_db`) and
        the Airflow database as Celery's result backend.
        """
        s = self.servers
        celery = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{s.redis_host}:{s.redis_port}/{self.broker_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + s.pg_url(self.db("airflow"), "postgresql+psycopg", password=False),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        } if executor == "celery" else {}
        if executor not in ("local", "celery"):
            raise ValueError(f"executor {executor!r}: 'local' or 'celery'")
        return {
            "RETRAIN_HOME": str(self.home),
            "RETRAIN_DATA_ROOT": str(self.home),
            "RETRAIN_FEATURE_REPO": str(self.feature_repo),
            "RETRAIN_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "RETRAIN_DEPLOYMENT": "production",
            "FEAST_PG_HOST": s.pg_host, "FEAST_PG_PORT": str(s.pg_port), "FEAST_PG_DB": self.db("feast"),
            "FEAST_PG_USER": s.pg_user, "FEAST_PG_SSLMODE": _env("FEAST_PG_SSLMODE", "disable"),
            "FEAST_PG_PASSWORD": s.pg_password,
            "FEAST_REDIS": f"{s.redis_host}:{s.redis_port},db={self.redis_db}",
            "AIRFLOW_HOME": str(self.home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": s.pg_url(self.db("airflow"), "postgresql+psycopg"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": s.pg_url(self.db("airflow"), "postgresql+psycopg"),
            "AIRFLOW__API__HOST": s.bind_host,
            "AIRFLOW__LOGGING__LOGGING_LEVEL": _env("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
            **celery,
        }

    def create_databases(self) -> None:
        """Creates the three databases if missing (idempotent)."""
        with self.servers.connect() as conn:
            existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for part in ("airflow", "mlflow", "feast"):
                if self.db(part) not in existing:
                    conn.execute(f'CREATE DATABASE "{self.db(part)}"')  # the name matched NAME

    def drop(self, broker: bool = False) -> None:
        """Drops the databases and flushes the Redis db index (and the broker's, if used): a throwaway check's leftovers."""
        import redis

        with self.servers.connect() as conn:
            for part in ("airflow", "mlflow", "feast"):
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db(part)}" WITH (FORCE)')  # the name matched NAME
        for db in (self.redis_db, self.broker_db) if broker else (self.redis_db,):
            redis.Redis(host=self.servers.redis_host, port=self.servers.redis_port, db=db).flushdb()


class MlflowServer:
    """``mlflow server`` on the stack's PostgreSQL database with an artifact folder, bound to 127.0.0.1.

    The artifact destination may be an object store instead (``RETRAIN_ARTIFACTS``,
    e.g. ``s3://bucket/mlflow``, with the store's credentials in the environment).
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.proc: subprocess.Popen | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The server's command line and environment: the PostgreSQL password travels in ``PGPASSWORD``, never
        on the command line, where ``ps`` would show it to every user of the machine."""
        s, stack = self.stack.servers, self.stack
        artifacts = _env("RETRAIN_ARTIFACTS", (stack.home / "mlartifacts").resolve().as_uri())
        cmd = [str(BIN / "mlflow"), "server", "--host", s.bind_host, "--port", str(stack.mlflow_port),
               "--backend-store-uri", s.pg_url(stack.db("mlflow"), password=False), "--artifacts-destination", artifacts,
               "--workers", "1"]
        # MLflow 3's server also starts a job runner (huey consumers for GenAI judges and trace rollups) unless told
        # not to: the pipeline runs no server-side jobs, and those processes cost about a second of CPU each at start
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ,
               **({"PGPASSWORD": s.pg_password} if s.pg_password else {})}
        return cmd, env

    def start(self, timeout: float = 120) -> MlflowServer:
        stack = self.stack
        cmd, env = self.command()
        log_file = stack.home / "mlflow-server.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as out:
            self.proc = subprocess.Popen(  # nosec B603  # fixed argument list
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {log_file}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s; see {log_file}")
            time.sleep(0.5)
        return self

    def healthy(self) -> bool:
        try:
            # http to 127.0.0.1 only: the URL is built from the stack, not from user input
            with urllib.request.urlopen(f"{self.stack.tracking_uri}/health", timeout=2) as resp:  # nosec B310
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the server's process group (gunicorn/uvicorn workers too), SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def airflow_migrate(env: dict[str, str]) -> None:
    """``airflow db migrate`` against the stack's PostgreSQL database, then the DAGs' pools (``recsys_common.POOLS``)."""
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(  # nosec B603  # fixed argument list
        [str(BIN / "airflow"), "db", "migrate"], env={**os.environ, **env}, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"airflow db migrate failed: {tail}")
    from recsys_retrain.airflow_local import create_pools

    create_pools(env)


def copy_feature_repo(dest: Path) -> Path:
    """The Feast definitions and both feature_store yaml files, without generated data."""
    from recsys_retrain.resources import copy_definitions

    return copy_definitions(REPO / "features", dest)


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the Celery workers this module starts: the worker's name.

    Airflow records it as each task instance's ``hostname``; two workers on one machine
    would otherwise both record the machine's name, and which one ran a task is lost.
    """
    return os.environ.get("RETRAIN_WORKER_NAME") or socket.getfqdn()


class AirflowServices:
    """Airflow's own processes on the stack: API server, DAG processor, scheduler, and Celery workers.

    With LocalExecutor the scheduler runs each task in a subprocess; with CeleryExecutor
    the scheduler sends it to the broker and a worker serving the task's queue runs it
    (``workers``: one ``airflow celery worker`` per name, serving the queue given).
    Either way the task reports to the API server's execution API, as on a production
    host. The JWT secret the processes share is made here for this run and never written
    to a file.
    """

    COMPONENTS = ("api-server", "dag-processor", "scheduler")

    def __init__(self, env: dict[str, str], home: Path, workers: dict[str, str] | None = None) -> None:
        self.workers = dict(workers or {})
        self.port = free_port()
        self.env = {
            **env,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__PARALLELISM": "2",
        }
        self.home = home
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> AirflowServices:
        self.home.mkdir(parents=True, exist_ok=True)
        for name in self.COMPONENTS:
            cmd = [str(BIN / "airflow"), name] + (["--host", self.env["AIRFLOW__API__HOST"], "--port", str(self.port)]
                                                   if name == "api-server" else [])
            with open(self.home / f"airflow-{name}.log", "ab") as out:
                self.procs[name] = subprocess.Popen(  # nosec B603  # fixed argument list
                    cmd, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        for name, queue in self.workers.items():
            cmd, env = self.worker_command(name, queue)
            with open(self.home / f"airflow-{name}.log", "ab") as out:
                self.procs[name] = subprocess.Popen(  # nosec B603  # fixed argument list
                    cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        return self

    def worker_command(self, name: str, queue: str) -> tuple[list[str], dict[str, str]]:
        """One Celery worker serving ``queue``, one task at a time, named ``name`` in the task instances it runs.

        No log server (``--skip-serve-logs``: two on one machine would share its port)
        and a pid file of its own.
        """
        cmd = [str(BIN / "airflow"), "celery", "worker", "--queues", queue, "--concurrency", "1",
               "--celery-hostname", f"{name}@%h", "--skip-serve-logs", "--pid", str(self.home / f"{name}.pid")]
        env = {**os.environ, **self.env, "RETRAIN_WORKER_NAME": name,
               "AIRFLOW__CORE__HOSTNAME_CALLABLE": "infra.stack.worker_hostname",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        return cmd, env

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}; see {self.home / f'airflow-{name}.log'}")

    def cli(self, *args: str, timeout: float = 300) -> str:
        """One ``airflow`` command against the stack; its stdout, or a RuntimeError naming it."""
        done = subprocess.run(  # nosec B603  # fixed argument list
            [str(BIN / "airflow"), *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow {args[0]} {args[1]} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        return done.stdout

    def stop(self) -> None:
        """SIGTERM to every process group (the LocalExecutor's workers too), SIGKILL after 30 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
