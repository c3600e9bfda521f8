"""A throwaway self-signed certificate made at test time by the real ``openssl``.

Nothing secret is kept in the repository: each test that needs TLS makes its own
key and certificate in its temporary directory, valid for two days.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess

import pytest

from tests.e2e.support import DEADLINE

# The names a client may use to reach a test server: hostname checks pass for all of them.
SUBJECT_ALT_NAME = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A private key, its self-signed certificate, and one PEM holding both."""

    key: pathlib.Path
    cert: pathlib.Path
    combined: pathlib.Path


def openssl() -> str:
    """The real ``openssl`` command, which ``make test`` installs."""
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("openssl is not installed: 'make test' installs the openssl package")
    return path


def make_certificate(directory: pathlib.Path) -> Certificate:
    """Write ``key.pem``, ``cert.pem`` and ``combined.pem`` (key then certificate)
    into ``directory`` with ``openssl req``; the key is readable by its owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "key.pem", directory / "cert.pem"
    result = subprocess.run(
        [openssl(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext",
         SUBJECT_ALT_NAME],
        capture_output=True, text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"openssl req failed: {result.stderr}"
    key.chmod(0o600)
    combined = directory / "combined.pem"
    combined.write_bytes(key.read_bytes() + cert.read_bytes())
    combined.chmod(0o600)
    return Certificate(key, cert, combined)
