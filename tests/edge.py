"""What stands between a browser and the gateway, run for real: nginx from the
rendered template (with a self-signed certificate), plain static web servers
as other origins, and Debian's Chromium. Every process binds 127.0.0.1 on a
free port and is stopped by PID."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .tools import require

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "nginx" / "templates" / "gateway.conf.template"
# Exactly the README's list: nginx's own $variables must survive rendering.
TEMPLATE_VARS = "${GATEWAY_UPSTREAM} ${NGINX_PORT} ${NGINX_TLS_PORT} ${TLS_CERT} ${TLS_KEY}"

CHROMIUM = "/usr/bin/chromium"
# Without the network flags Chromium's background services keep failing to
# reach the internet on a closed machine and flood the log.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-gpu", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    stop(proc)
    raise RuntimeError(f"{what} did not listen on {port}: {log.read_text(errors='replace')}")


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (browsers are told to accept it)."""
    openssl = require("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def render_template(env: dict[str, str]) -> str:
    """The template rendered by envsubst, as the README does it."""
    envsubst = require("envsubst")
    result = subprocess.run([envsubst, TEMPLATE_VARS], input=TEMPLATE.read_text(), capture_output=True, text=True,
                            env={"PATH": os.environ.get("PATH", ""), **env}, check=True)
    return result.stdout


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    http_port: int
    tls_port: int
    prefix: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def access_log(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        stop(self.proc)


def main_config(prefix: Path) -> str:
    """The http {} around the rendered conf.d file, like /etc/nginx/nginx.conf but in `prefix`.

    It turns gzip on for event streams on purpose: a server-wide gzip policy is
    common (Debian's nginx.conf has `gzip on`), and the template must still
    never compress a stream."""
    user = "user root root;" if os.geteuid() == 0 else ""  # workers must reach the temp dirs in prefix
    temp = "".join(f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                            "uwsgi", "scgi"))
    return f"""
{user}
daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
    log_format edge '$request_method $uri $status $server_protocol $body_bytes_sent';
    access_log {prefix / "access.log"} edge;
    gzip on;
    gzip_min_length 1;
    gzip_types text/event-stream application/json text/javascript;
{temp}    include {prefix / "conf.d"}/*.conf;
}}
"""


def start_nginx(prefix: Path, upstream: str, *, read_timeout: str | None = None) -> Nginx:
    """nginx in the foreground (daemon off) from the rendered template, on two free loopback ports.

    `read_timeout` replaces the template's proxy_read_timeout, for the test that
    proves heartbeats keep a stream alive through a proxy with a short one."""
    nginx = require("nginx")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "conf.d").mkdir(exist_ok=True)
    cert, key = self_signed_cert(prefix)
    for attempt in range(3):  # a free port can be taken between choosing it and binding it
        http_port, tls_port = free_port(), free_port()
        conf = render_template({"GATEWAY_UPSTREAM": upstream, "NGINX_PORT": f"127.0.0.1:{http_port}",
                                "NGINX_TLS_PORT": f"127.0.0.1:{tls_port}", "TLS_CERT": str(cert),
                                "TLS_KEY": str(key)})
        if read_timeout is not None:
            conf, replaced = re.subn(r"proxy_read_timeout \S+;", f"proxy_read_timeout {read_timeout};", conf)
            assert replaced == 1, "the template's proxy_read_timeout moved"
        (prefix / "conf.d" / "gateway.conf").write_text(conf)
        (prefix / "nginx.conf").write_text(main_config(prefix))
        log = prefix / "error.log"
        args = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(log)]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, f"nginx -t rejected the rendered template:\n{check.stderr}\n{conf}"
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(http_port, proc, "nginx", log)
            wait_for_port(tls_port, proc, "nginx", log)
            return Nginx(proc, http_port, tls_port, prefix)
        except RuntimeError:
            stop(proc)
            if attempt == 2 or "Address already in use" not in log.read_text(errors="replace"):
                raise
    raise AssertionError("unreachable")


@dataclass
class StaticSite:
    """A plain web server for pages on another origin than the gateway's."""

    proc: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc)


def start_static_site(root: Path, log: Path) -> StaticSite:
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                     str(root), str(port)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc, "static site", log)
            return StaticSite(proc, port, root)
        except RuntimeError:
            stop(proc)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
