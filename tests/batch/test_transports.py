"""Batch runs over real file servers: FTP, FTPS (explicit TLS) and SFTP."""

from __future__ import annotations

import json

import pytest
import trustme

from crmsync.errors import TransportError
from crmsync.files import FileSpace
from crmsync.testing.servers import ftp_server, sftp_server

from ..core.conftest import Pair, write_config


@pytest.fixture
def tls_files(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


def _seed(pair: Pair) -> None:
    pair.crm.add("ann@example.com", fields={"FirstName": "Ann", "OptOut": "false"},
                 memberships={"campaign:7": "Responded"})
    pair.crm.add("bob@example.com", fields={"FirstName": "Bob", "OptOut": "false"})


def _round_trip(pair: Pair, root) -> None:
    """Full export, the ESP imports; an unsubscribe comes back; diff; archive."""
    stats = pair.sync()
    assert stats.status == "succeeded" and len(stats.files_uploaded) == 1
    name = stats.files_uploaded[0]
    manifest = json.loads((root / "in" / f"{name}.manifest.json").read_text())
    assert manifest["rows"] == 3 and manifest["file"] == name
    assert not [p for p in (root / "in").iterdir() if p.name.endswith(".part")]
    pair.space = root
    pair.esp_import()
    pair.esp_unsubscribe("bob@example.com", export="unsubscribed-20260101.csv")
    stats = pair.sync()
    assert stats.crm_written == 1 and stats.files_archived == ["unsubscribed-20260101.csv"]
    assert pair.crm_record("bob@example.com")["fields"]["OptOut"] == "true"
    assert (root / "archive" / "unsubscribed-20260101.csv").exists()


def test_ftp_round_trip(tmp_path, monkeypatch) -> None:
    root = tmp_path / "ftp"
    root.mkdir()
    monkeypatch.setenv("CRMSYNC_FILES_PASSWORD", "s3cret")
    with ftp_server(root) as port:
        path = write_config(tmp_path, space=f"ftp://crm@127.0.0.1:{port}/")
        pair = Pair(tmp_path, path)
        _seed(pair)
        _round_trip(pair, root)


def test_ftps_round_trip_with_protected_data_channel(tmp_path, monkeypatch, tls_files) -> None:
    root = tmp_path / "ftps"
    root.mkdir()
    monkeypatch.setenv("CRMSYNC_FILES_PASSWORD", "s3cret")
    with ftp_server(root, tls=True, certfile=str(tls_files["cert"]),
                    keyfile=str(tls_files["key"])) as port:
        path = write_config(tmp_path, space=f"ftps://crm@127.0.0.1:{port}/")
        text = path.read_text().replace(
            f'url = "ftps://crm@127.0.0.1:{port}/"',
            f'url = "ftps://crm@127.0.0.1:{port}/"\nca_file = "{tls_files["ca"]}"')
        path.write_text(text)
        pair = Pair(tmp_path, path)
        _seed(pair)
        _round_trip(pair, root)


def test_ftps_refuses_an_untrusted_certificate(tmp_path, tls_files) -> None:
    root = tmp_path / "ftps"
    root.mkdir()
    with ftp_server(root, tls=True, certfile=str(tls_files["cert"]),
                    keyfile=str(tls_files["key"])) as port:
        from pydantic import SecretStr

        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            FileSpace(f"ftps://crm@127.0.0.1:{port}/", password=SecretStr("s3cret")).list("in")


def _keyscan(port: int) -> str:
    """The server's host key as a known_hosts line (what ``ssh-keyscan`` prints)."""
    import paramiko

    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.start_client(timeout=10)
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    return f"[127.0.0.1]:{port} {key.get_name()} {key.get_base64()}\n"


def test_sftp_round_trip(tmp_path, monkeypatch) -> None:
    root = tmp_path / "sftp"
    root.mkdir()
    monkeypatch.setenv("CRMSYNC_FILES_PASSWORD", "s3cret")
    with sftp_server(root) as port:
        (tmp_path / "known_hosts").write_text(_keyscan(port))
        path = write_config(tmp_path, space=f"sftp://crm@127.0.0.1:{port}/")
        path.write_text(path.read_text().replace(
            f'url = "sftp://crm@127.0.0.1:{port}/"',
            f'url = "sftp://crm@127.0.0.1:{port}/"\nknown_hosts = "{tmp_path / "known_hosts"}"'))
        pair = Pair(tmp_path, path)
        _seed(pair)
        _round_trip(pair, root)


def test_wrong_password_is_a_clear_error_without_the_secret(tmp_path) -> None:
    root = tmp_path / "ftp"
    root.mkdir()
    from pydantic import SecretStr

    with ftp_server(root) as port, pytest.raises(TransportError) as info:
        FileSpace(f"ftp://crm@127.0.0.1:{port}/", password=SecretStr("wrong-pass")).list("in")
    assert "wrong-pass" not in str(info.value)
    assert "CRMSYNC_FILES_PASSWORD" in str(info.value) or "530" in str(info.value)


def test_password_in_url_is_refused() -> None:
    with pytest.raises(TransportError, match="CRMSYNC_FILES_PASSWORD"):
        FileSpace("ftp://crm:hunter2@127.0.0.1:21/")
