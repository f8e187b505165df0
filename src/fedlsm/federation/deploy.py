"""Flower's Deployment Engine, on one machine exactly as on many.

* :func:`make_certificates` writes a CA and a server certificate for the SuperLink's addresses
  (``fedlsm certs``); SuperNodes and the submitting CLI trust the CA.
* SuperNode authentication (Flower's own, flwr 1.42): TLS proves the SuperLink to the SuperNodes;
  node keys prove each SuperNode to the SuperLink, so no one else can join as a client and be
  sent the round's messages. :func:`make_node_key` writes an EC P-384 key pair in OpenSSH format
  (``fedlsm node-key``, on the client's machine); the SuperLink's operator registers the public
  key (:func:`register_supernode`, ``fedlsm register-node``: ``flwr supernode register``); the
  SuperLink refuses unregistered nodes (``--enable-supernode-auth``) and the SuperNode signs its
  requests with the private key (``--auth-supernode-private-key``). A registered key keeps its
  Flower node id, so a SuperNode that restarts can rejoin only once the SuperLink has marked its
  previous session offline (heartbeat patience, about a minute after it died).
* :func:`superlink_command` / :func:`supernode_command` are the ``flower-superlink`` /
  ``flower-supernode`` invocations (``fedlsm superlink`` / ``fedlsm supernode`` run them): TLS on,
  runtime dependency installation off (the environment is installed already), each SuperNode
  told only its partition index (``--node-config partition-id=K``).
* :func:`submit_run` is ``fedlsm run --engine flower-deploy``: it writes a minimal Flower app
  (``pyproject.toml`` whose components are :data:`fedlsm.federation.apps.server_app` and
  ``client_app``, with the run config as Flower run config) and calls ``flwr run`` against the
  SuperLink. The run itself (run folder, metrics, table) happens in the SuperLink's ServerApp
  process; when that folder is on this machine its table is printed here too.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fedlsm.errors import ConfigError, FedLSMError

CA, CERT, KEY = "ca.pem", "server.pem", "server.key"


def _bin(name: str) -> str:
    """An executable installed beside this Python (the venv's flwr tools)."""
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for Flower's tools: this Python's bin folder first on PATH (a SuperLink starts
    ``flower-superexec`` and a SuperNode ``flwr-clientapp`` by name, even from an unactivated venv)
    and telemetry off."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "FLWR_TELEMETRY_ENABLED": "0", **extra}


def _claim(paths: Sequence[Path], overwrite: bool, fix: str) -> None:
    """Make room for new key files at ``paths``: refuse when one exists (replacing a CA or a key silently
    would cut off everyone who trusts the old one) unless ``overwrite``, which removes them (a link
    itself, never what it points to)."""
    taken = [p for p in paths if p.exists() or p.is_symlink()]
    if taken and not overwrite:
        raise ConfigError(str(taken[0]), "already exists", fix)
    for p in taken:
        p.unlink()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file created with ``mode`` from the start (O_EXCL: never an existing
    file or a planted link), so a private key is never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certificates(
    folder: str | Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 30, overwrite: bool = False
) -> dict[str, Path]:
    """A new CA and a server certificate for ``hosts`` (IPs or DNS names) signed by it, as PEM files.
    An existing CA, certificate or key in ``folder`` is replaced only with ``overwrite``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    _claim(
        [out / CA, out / CERT, out / KEY],
        overwrite,
        "pass --overwrite to replace the CA (then give every SuperNode the new ca.pem), or choose another folder",
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedlsm test CA"))
        .issuer_name(name("fedlsm test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_new(out / CA, ca.public_bytes(pem), 0o644)
    _write_new(out / CERT, cert.public_bytes(pem), 0o644)
    _write_new(
        out / KEY, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600
    )
    return {"ca": out / CA, "cert": out / CERT, "key": out / KEY}


NODE_KEY, NODE_PUB = "{}.key", "{}.pub"


def make_node_key(folder: str | Path, name: str = "supernode", overwrite: bool = False) -> dict[str, Path]:
    """A SuperNode's authentication key pair (EC P-384, OpenSSH format, as flwr 1.42 reads them):
    ``<name>.key`` stays on the client's machine, ``<name>.pub`` goes to the SuperLink's operator.
    An existing pair is replaced only with ``overwrite``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / NODE_KEY.format(name), out / NODE_PUB.format(name)
    _claim(
        [private, public],
        overwrite,
        "pass --overwrite to replace the key (then register the new .pub), or use another --name",
    )
    key = ec.generate_private_key(ec.SECP384R1())
    enc = serialization.Encoding
    _write_new(
        private, key.private_bytes(enc.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()), 0o600
    )
    _write_new(public, key.public_key().public_bytes(enc.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n", 0o644)
    return {"private": private, "public": public}


def register_supernode(
    public_key: str | Path,
    *,
    superlink: str = "127.0.0.1:9093",
    root_certificates: str | Path | None = None,
    insecure: bool = False,
    home: str | Path | None = None,
) -> int:
    """Register a SuperNode's public key with a SuperLink started with ``supernode_auth`` (its Control
    API, through ``flwr supernode register``); returns the Flower node id the key is bound to."""
    import tempfile

    if not insecure and not root_certificates:
        raise ConfigError(
            "root_certificates",
            "registering a SuperNode talks TLS to the SuperLink",
            "pass the CA that signed the SuperLink's certificate (or insecure for a local test)",
        )
    with tempfile.TemporaryDirectory() as tmp:
        folder = _flower_home(
            Path(home or tmp), superlink, str(root_certificates) if root_certificates else None, insecure
        )
        proc = subprocess.run(
            [_bin("flwr"), "supernode", "register", str(Path(public_key).resolve()), "fedlsm", "--format", "json"],
            env=tool_env(FLWR_HOME=str(folder)),
            capture_output=True,
            text=True,
        )
    try:  # `--format json` prints {"node-id": ...} or {"error-message": ...} after any log lines
        reply = json.loads(proc.stdout[proc.stdout.index("{") :])
    except ValueError:
        reply = {}
    if "node-id" in reply:
        return int(reply["node-id"])
    why = reply.get("error-message") or (proc.stdout + proc.stderr).strip()[-800:]
    why = why.strip().splitlines()[-1].strip() if why.strip() else f"exit status {proc.returncode}"
    raise FedLSMError(
        f"could not register {public_key} with the SuperLink at {superlink}: {why} "
        "(fix: check the address and CA, that the SuperLink runs with --supernode-auth, "
        "and that this key is not registered already)"
    )


def superlink_command(
    certs: str | Path | None,
    *,
    host: str = "127.0.0.1",
    port: int = 9093,
    database: str | None = None,
    supernode_auth: bool = False,
) -> list[str]:
    """``flower-superlink`` serving Fleet, Control and ServerAppIo on ``host:port`` (TLS unless certs is
    None), through :mod:`fedlsm.federation.superlink`: other machines reach only the Fleet API (node
    registration and run submission answer this machine only); with ``supernode_auth`` only SuperNodes
    whose key was registered may connect."""
    cmd = [sys.executable, "-m", "fedlsm.federation.superlink", "--host", host, "--port", str(port)]
    cmd.append("--disable-runtime-dependency-installation")
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    if certs is None:
        cmd.append("--insecure")
    else:
        c = Path(certs)
        cmd += ["--ssl-certfile", str(c / CERT), "--ssl-keyfile", str(c / KEY), "--ssl-ca-certfile", str(c / CA)]
    if database:
        cmd += ["--database", database]
    return cmd


def supernode_command(
    partition: int,
    clients: int,
    *,
    superlink: str = "127.0.0.1:9093",
    root_certificates: str | Path | None = None,
    port: int | None = None,
    auth_key: str | Path | None = None,
    data: str | Path | None = None,
    public: str | Path | None = None,
    test: str | Path | None = None,
    max_epsilon: float = 10.0,
    allow_non_private: bool = False,
) -> list[str]:
    """``flower-supernode`` for client ``partition`` of ``clients``; ``port`` is its local ClientApp API
    (must differ between SuperNodes sharing a machine); ``auth_key``: its private key (registered).
    The node config carries the site's own choices, which no run config overrides: ``data`` (its own
    examples; ``public`` and ``test``: its copies of the public examples and the evaluation split),
    ``max_epsilon`` and ``allow_non_private`` (fedlsm.federation.policy)."""
    node = (
        f"partition-id={partition} num-partitions={clients} max-epsilon={float(max_epsilon)!r} "
        f"allow-non-private={'true' if allow_non_private else 'false'}"
    )
    for key, path in (("data-path", data), ("public-path", public), ("test-path", test)):
        if path is not None:
            node += f" {key}={json.dumps(str(Path(path).resolve()))}"
    cmd = [
        _bin("flower-supernode"),
        "--superlink",
        superlink,
        "--node-config",
        node,
        "--port",
        str(port if port is not None else 9094 + partition),
    ]
    cmd += ["--insecure"] if root_certificates is None else ["--root-certificates", str(root_certificates)]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    return cmd


def _app_dir(folder: Path, cfg_text: str, roles: str) -> Path:
    import tomli_w

    folder.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["setuptools"], "build-backend": "setuptools.build_meta"},
        "project": {
            "name": "fedlsm-run",
            "version": "1.0.0",
            "description": "a fedlsm run on Flower",
            "license": "Apache-2.0",
            "dependencies": ["fedlsm"],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedlsm",
                    "components": {
                        "serverapp": "fedlsm.federation.apps:server_app",
                        "clientapp": "fedlsm.federation.apps:client_app",
                    },
                    "config": {"fedlsm-config": cfg_text, "fedlsm-roles": roles},
                }
            }
        },
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder


def _flower_home(folder: Path, superlink: str, root_certificates: str | None, insecure: bool) -> Path:
    import tomli_w

    folder.mkdir(parents=True, exist_ok=True)
    conn: dict = {"address": superlink}
    if insecure:
        conn["insecure"] = True
    elif root_certificates:
        conn["root-certificates"] = str(Path(root_certificates).resolve())
    (folder / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "fedlsm", "fedlsm": conn}}))
    return folder


def write_submission(cfg) -> tuple[Path, Path, Path]:
    """(run folder, app folder, Flower home) for a deployment: the run folder checked as a local run's
    is (``fedlsm.runfolder``), and the app whose run config every SuperNode receives. That config is
    the validated RunConfig, which holds no secret: the LLM's key stays in the environment."""
    from fedlsm import runfolder
    from fedlsm.config import check_run_name, default_run_name
    from fedlsm.methods import ROLES, get_roles

    get_roles(cfg.method)
    f = cfg.federation
    if not f.insecure and not f.root_certificates:
        raise ConfigError(
            "federation.root_certificates",
            "flower-deploy talks TLS and needs the CA that signed the SuperLink's certificate",
            "pass --set federation.root_certificates=certs/ca.pem (or federation.insecure=true for a local test)",
        )
    name = check_run_name(cfg.name or default_run_name(cfg))
    out = Path(cfg.output_dir).resolve()
    run_dir = out / name
    runfolder.check(cfg, run_dir)  # the ServerApp checks again where it runs; refuse before submitting
    if cfg.overwrite:
        runfolder.clear(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_text = cfg.model_copy(update={"name": name, "output_dir": str(out)}).to_yaml()
    app = _app_dir(run_dir / "flower-app", cfg_text, ROLES[cfg.method])
    home = _flower_home(run_dir / "flower-home", f.superlink, f.root_certificates, f.insecure)
    return run_dir, app, home


def submit_run(cfg, console):
    """``fedlsm run --engine flower-deploy``: hand the run to the SuperLink and wait for it to finish."""
    from fedlsm.core import MethodResult, render_table

    f = cfg.federation
    run_dir, app, home = write_submission(cfg)
    env = tool_env(FLWR_HOME=str(home))
    console.print(f"submitting {cfg.method} to the SuperLink at {f.superlink} (run folder {run_dir})")
    proc = subprocess.run([_bin("flwr"), "run", str(app), "fedlsm", "--stream"], env=env)
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise RuntimeError(
            f"`flwr run` exited with {proc.returncode} and the ServerApp wrote no {metrics} "
            f"(is the SuperLink at {f.superlink} up? is the run folder on another machine?)"
        )
    m = json.loads(metrics.read_text())
    if m.get("run", {}).get("status") != "done" or "table" not in m:
        raise RuntimeError(f"the run did not finish (status {m.get('run', {}).get('status')!r}; see {metrics})")
    result = MethodResult(m["table"]["rows"], m["table"]["title"], m.get("summary", {}), **m.get("result", {}))
    console.print(render_table(result))
    return None, result
