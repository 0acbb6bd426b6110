"""Site identities for secure aggregation's signed-key mode: each site signs the public keys it
advertises with a key certified by a root every site trusts, so a server that substitutes one
client's keys with its own (to sit in the middle of the pairwise masks) is caught by every
honest client. Bonawitz et al.'s malicious-server variant does the same with a PKI; the
certificates here are ordinary X.509 (NVIDIA FLARE's provisioned startup kits hold exactly
these: `rootCA.pem`, and a `client.crt` / `client.key` per site whose common name is the site).

A folder of identities is laid out as `fedumm identities` writes it:
    rootCA.pem, {site}.crt, {site}.key
or as a FLARE project's provisioned kits: `{site}/startup/{rootCA.pem, client.crt, client.key}`.
A simulation without a folder gets identities made for the run (`simulated_identities`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path


class IdentityError(ValueError):
    """A certificate or signature that does not prove who a message claims to come from."""


@dataclass(frozen=True)
class Identity:
    """One site's signing key and certificate, and the root it trusts for everyone's."""

    name: str
    private_key_pem: bytes
    certificate_pem: bytes
    root_pem: bytes

    def sign(self, message: bytes) -> bytes:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        return _sign(key, message)


def _sign(key, message: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    raise IdentityError(f"cannot sign with a {type(key).__name__}")


def verify(
    root_pem: bytes, name: str, certificate_pem: bytes, message: bytes, signature: bytes
) -> None:
    """That `certificate_pem` is issued by the root to `name` (its common name), is valid now,
    and that its key signed `message`; IdentityError otherwise."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    try:
        root = x509.load_pem_x509_certificate(root_pem)
        cert = x509.load_pem_x509_certificate(certificate_pem)
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise IdentityError(f"{name}'s certificate is not issued by the trusted root ({e})") from e
    names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [name]:
        raise IdentityError(f"the certificate presented as {name}'s is {names}'s")
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IdentityError(f"{name}'s certificate is not valid now")
    key = cert.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(
                signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
            )
        else:
            raise IdentityError(f"{name}'s certificate holds an unsupported {type(key).__name__}")
    except InvalidSignature:
        raise IdentityError(f"the signature on {name}'s keys is not {name}'s") from None


def issue_certificate(
    subject: str,
    public_key,
    issuer: str,
    issuer_key,
    ca: bool,
    days: int = 365,
    extensions: tuple = (),
):
    """An X.509 certificate (cryptography's object) for `public_key`, common name `subject`,
    signed by `issuer_key` in the name of `issuer`, valid from 5 minutes ago for `days`;
    `extensions`: more (extension, critical) pairs, e.g. a TLS server's names and usages."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    now = datetime.datetime.now(datetime.timezone.utc)
    name = lambda cn: x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])  # noqa: E731
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
        digest = None  # Ed25519 hashes by itself
    elif isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA384()
    else:
        digest = hashes.SHA256()
    return builder.sign(issuer_key, digest)


def write_private(path: Path, data: bytes) -> None:
    """`data` in a file only its owner reads (0600 from its creation)."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # a file that existed keeps its mode otherwise
        f.write(data)


def _certificate(subject: str, public_key, issuer: str, issuer_key, ca: bool) -> bytes:
    from cryptography.hazmat.primitives import serialization

    cert = issue_certificate(subject, public_key, issuer, issuer_key, ca)
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def simulated_identities(names: list[str]) -> dict[str, Identity]:
    """A root and an Ed25519 identity for each of `names`, made now (a simulation's clients)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    root_key = Ed25519PrivateKey.generate()
    root = _certificate("fedumm root", root_key.public_key(), "fedumm root", root_key, ca=True)
    out = {}
    for n in names:
        key = Ed25519PrivateKey.generate()
        cert = _certificate(n, key.public_key(), "fedumm root", root_key, ca=False)
        out[n] = Identity(n, _pem(key), cert, root)
    return out


def write_identities(folder: Path, names: list[str]) -> Path:
    """`fedumm identities`: a root and one identity per site in `folder` (keys readable by
    their owner only). Hand each site its own .key, and every site rootCA.pem."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = simulated_identities(names)
    (folder / "rootCA.pem").write_bytes(next(iter(made.values())).root_pem)
    for n, identity in made.items():
        (folder / f"{n}.crt").write_bytes(identity.certificate_pem)
        write_private(folder / f"{n}.key", identity.private_key_pem)
    return folder


def load_identity(folder: Path, name: str) -> Identity:
    """Site `name`'s identity from `folder` (either layout in the module's docstring)."""
    folder = Path(folder)
    layouts = [
        (folder / "rootCA.pem", folder / f"{name}.crt", folder / f"{name}.key"),
        tuple(folder / name / "startup" / f for f in ("rootCA.pem", "client.crt", "client.key")),
    ]
    for files in layouts:
        if all(f.is_file() for f in files):
            root, cert, key = (f.read_bytes() for f in files)
            return Identity(name, key, cert, root)
    raise FileNotFoundError(
        f"secure_aggregation.identities: no identity for {name} in {folder}: expected "
        f"rootCA.pem, {name}.crt and {name}.key (fedumm identities writes them), or a FLARE "
        f"kit {name}/startup/{{rootCA.pem, client.crt, client.key}}"
    )


class Identities:
    """Where a run's site identities come from: a folder (each process reads only what it
    needs: a site its own key, the server the root), or, without one, made for the run in this
    process (a simulation whose clients all live here)."""

    def __init__(self, folder: str | Path | None, sites: list[str]):
        self.folder, self.sites = (Path(folder) if folder else None), sites
        self._made: dict[str, Identity] | None = None

    def of(self, site: str) -> Identity:
        if self.folder is not None:
            return load_identity(self.folder, site)
        if self._made is None:
            self._made = simulated_identities(self.sites)
        return self._made[site]

    @property
    def root(self) -> bytes:
        """The root every identity must chain to: the folder's rootCA.pem, or any FLARE kit's
        in it (the server's machine holds its own kit, not the sites')."""
        if self.folder is None:
            return self.of(self.sites[0]).root_pem
        for candidate in [
            self.folder / "rootCA.pem",
            *sorted(self.folder.glob("*/startup/rootCA.pem")),
        ]:
            if candidate.is_file():
                return candidate.read_bytes()
        raise FileNotFoundError(
            f"secure_aggregation.identities: no rootCA.pem in {self.folder}, "
            "nor in a FLARE kit's startup/ folder in it"
        )
