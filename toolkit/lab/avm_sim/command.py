"""Run the simulator as a process: prints its URL (or a JSON line) and serves until stopped.

Example::

    python -m toolkit.lab.avm_sim --datastore ds1=/tmp/ds1 --datastore ds2=/tmp/ds2 \\
        --storage-group sg1=ds1,ds2 --flavour 4.x --port 0 --json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from toolkit.lab.avm_sim.simulator import AvmSimulator


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m toolkit.lab.avm_sim", description="App Volumes Manager simulator (lab use only)."
    )
    parser.add_argument("--datastore", action="append", type=_pair, required=True, metavar="NAME=DIR")
    parser.add_argument("--flavour", choices=("2.x", "4.x"), default="4.x")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a self-signed certificate")
    parser.add_argument("--cert-dir", type=Path, help="where to write the certificate (default: a temp dir)")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password-file", type=Path, help="file holding the password (default: admin)")
    parser.add_argument("--storage-group", action="append", type=_pair, default=[], metavar="NAME=DS1,DS2")
    parser.add_argument("--replication-interval", type=float, help="seconds between replication passes")
    parser.add_argument("--job-delay", type=float, default=0.2, help="seconds before a queued job runs")
    parser.add_argument("--session-idle", type=float, default=1800.0, help="idle seconds before a session expires")
    parser.add_argument("--version-shape", choices=("nested", "flat"), default="nested")
    parser.add_argument("--json", action="store_true", help="print one JSON line with url, port and TLS facts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    password = args.password_file.read_text(encoding="utf-8").strip() if args.password_file else "admin"
    sim = AvmSimulator(
        {name: Path(path) for name, path in args.datastore},
        args.flavour,
        host=args.host,
        port=args.port,
        tls=args.tls,
        cert_dir=args.cert_dir,
        username=args.username,
        password=password,
        session_idle_s=args.session_idle,
        job_delay_s=args.job_delay,
        replication_interval_s=args.replication_interval,
        storage_groups={name: tuple(members.split(",")) for name, members in args.storage_group},
        version_shape=args.version_shape,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():  # signals can only be caught there
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    with sim:
        if args.json:
            facts = {
                "url": sim.url,
                "port": sim.port,
                "flavour": sim.flavour,
                "cert_path": str(sim.cert_path) if sim.cert_path else None,
                "thumbprint_sha256": sim.thumbprint_sha256,
            }
            sys.stdout.write(json.dumps(facts) + "\n")
        else:
            sys.stdout.write(sim.url + "\n")
        sys.stdout.flush()
        stop.wait()
    return 0
