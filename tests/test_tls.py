"""TLS and mTLS on both planes with a throwaway CA made here, and key rotation of secrets at rest."""

from __future__ import annotations

import datetime
import ipaddress
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import settings_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support.auth import TEST_TOKEN
from support.mlp import build_mlp

import flightline
from flightline.server.app import App
from flightline.v1 import workspace_pb2

ROOT = Path(__file__).resolve().parents[1]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("flightline test CA", ca_key, None, ca=True)
    files: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(data)

    write("ca", ca.public_bytes(serialization.Encoding.PEM))
    for who, server in (("server", True), ("client", False)):
        key = _key()
        write(f"{who}-key", _pem_key(key))
        write(
            f"{who}-cert",
            _cert(who, key, (ca, ca_key), server=server).public_bytes(serialization.Encoding.PEM),
        )
    other_key = _key()  # a client certificate from a CA the server does not trust
    other_ca = _cert("someone else's CA", other_key, None, ca=True)
    stranger = _key()
    write("stranger-key", _pem_key(stranger))
    write(
        "stranger-cert", _cert("x", stranger, (other_ca, other_key)).public_bytes(serialization.Encoding.PEM)
    )
    return files


def round_trip(app: App, tmp_path: Path, **tls: str) -> None:
    """Control plane and data plane over TLS through the Python client: upload, deploy, infer."""
    with flightline.connect(app.grpc_address, token=TEST_TOKEN, **tls) as fl:
        ws = fl.workspaces.create(f"tls-{tmp_path.name[-12:]}")
        version = fl.upload(build_mlp(tmp_path / "m.onnx"), name="m", workspace=ws, framework="onnx")
        deployment = fl.deploy("m", version, workspace=ws)
        assert deployment.flight_location.startswith("grpc+tls://")
        values = np.random.default_rng(0).normal(size=(3, 29)).astype(np.float32)
        table = pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 29)})
        assert deployment.infer(table).num_rows == 3


def test_tls_on_both_planes(pki: dict[str, Path], tmp_path: Path) -> None:
    settings = replace(
        settings_for(tmp_path / "data"), tls_cert=str(pki["server-cert"]), tls_key=str(pki["server-key"])
    )
    with App(settings) as app:
        round_trip(app, tmp_path, tls_ca=str(pki["ca"]))
        # plain text is not answered, on either plane
        with grpc.insecure_channel(app.grpc_address) as channel:
            stub = workspace_pb2.ListWorkspacesRequest()
            with pytest.raises(grpc.RpcError) as plain:
                channel.unary_unary("/flightline.v1.WorkspaceService/ListWorkspaces")(
                    stub.SerializeToString(), timeout=5
                )
            assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        plain_flight = app.flight_location.replace("grpc+tls://", "grpc+tcp://")
        with flight.connect(plain_flight) as client, pytest.raises(flight.FlightError):
            list(client.do_action(flight.Action("healthcheck", b""), flight.FlightCallOptions(timeout=5)))


def test_mtls_admits_only_clients_with_a_certificate_of_the_ca(pki: dict[str, Path], tmp_path: Path) -> None:
    settings = replace(
        settings_for(tmp_path / "data"),
        tls_cert=str(pki["server-cert"]),
        tls_key=str(pki["server-key"]),
        tls_client_ca=str(pki["ca"]),
    )
    with App(settings) as app:
        round_trip(
            app,
            tmp_path,
            tls_ca=str(pki["ca"]),
            tls_cert=str(pki["client-cert"]),
            tls_key=str(pki["client-key"]),
        )
        # The CLI takes the same three files as options.
        cli = [sys.executable, "-m", "flightline.server.cli", "--server", app.grpc_address]
        cli += ["--tls-ca", str(pki["ca"])]
        mine = ["--tls-cert", str(pki["client-cert"]), "--tls-key", str(pki["client-key"])]
        listed = subprocess.run(
            [*cli, *mine, "workspaces", "list"], capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0 and f"tls-{tmp_path.name[-12:]}" in listed.stdout, listed.stderr
        refused = subprocess.run([*cli, "workspaces", "list"], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and refused.stderr.startswith("error: "), refused.stderr
        missing = [*cli[:-1], str(tmp_path / "no-such-ca.pem"), "workspaces", "list"]
        unread = subprocess.run(missing, capture_output=True, text=True, timeout=60)
        assert unread.returncode == 2, unread.stderr
        assert (
            unread.stderr
            == f"error: cannot read the TLS file {tmp_path / 'no-such-ca.pem'}: No such file or directory\n"
        )
        for cert, key in ((None, None), (pki["stranger-cert"], pki["stranger-key"])):
            options = {"tls_cert": str(cert), "tls_key": str(key)} if cert else {}
            with (
                flightline.connect(
                    app.grpc_address, token=TEST_TOKEN, tls_ca=str(pki["ca"]), **options
                ) as fl,
                pytest.raises(flightline.errors.UnavailableError),
            ):
                list(fl.workspaces.list())
            kwargs: dict[str, bytes] = {"tls_root_certs": pki["ca"].read_bytes()}
            if cert and key:
                kwargs |= {"cert_chain": cert.read_bytes(), "private_key": key.read_bytes()}
            with flight.connect(app.flight_location, **kwargs) as client, pytest.raises(flight.FlightError):
                list(client.do_action(flight.Action("healthcheck", b""), flight.FlightCallOptions(timeout=5)))


# -- secrets at rest: rotation ---------------------------------------------------------------------


def test_keys_rotate_re_encrypts_registry_tokens(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data")
    with App(settings) as app, flightline.connect(app.grpc_address) as fl:
        ws = fl.workspaces.create("rot")
        registry = fl.registries.create("r", "http://127.0.0.1:9", workspace=ws, token="dapi-ROTATE-ME-7")
    database = tmp_path / "data" / "flightline.db"

    def stored() -> str:
        with sqlite3.connect(database) as db:
            (token,) = db.execute("SELECT token FROM registries").fetchone()
        return str(token)

    before = stored()
    old_key = (tmp_path / "data" / "secret-key").read_text().split()[0]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flightline.server.cli",
            "keys",
            "rotate",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "1 secrets re-encrypted" in done.stdout + done.stderr
    after = stored()
    assert after != before and after.startswith("fernet:") and "ROTATE-ME" not in after
    keys = (tmp_path / "data" / "secret-key").read_text().split()
    assert keys[1] == old_key and keys[0] != old_key
    with App(settings) as again:  # a restarted server reads it with the new key
        assert again.store.get_registry(registry.id).token == "dapi-ROTATE-ME-7"
