#!/usr/bin/env python3
"""Generates signing keys, their JWKS and self-signed TLS material.

Used once to make config/dev/ (the example config's and `gatehouse demo`'s keys) and
tests/fixtures/ (the integration tests' keys); both are committed so a fresh
checkout runs without this script. Needs python3 with `cryptography`.

    python3 scripts/gen-keys.py config/dev dev
    python3 scripts/gen-keys.py tests/fixtures test
"""
import base64, datetime, ipaddress, json, os, sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def ib(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def write_key(path, key):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def rsa_key(out, name, kid, jwks):
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(f"{out}/{name}.key.pem", k)
    with open(f"{out}/{name}.pub.pem", "wb") as f:
        f.write(k.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    pn = k.public_key().public_numbers()
    jwks.append({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64u(ib(pn.n)), "e": b64u(ib(pn.e))})


def main():
    out, prefix = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    jwks = []
    rsa_key(out, "rs256", f"{prefix}-rs256", jwks)
    if prefix == "test":
        # A second RSA key, published only by the rotation test.
        extra = []
        rsa_key(out, "rs256-next", f"{prefix}-rs256-next", extra)
        with open(f"{out}/jwks-next.json", "w") as f:
            json.dump({"keys": jwks + extra}, f, indent=2)
    e = ec.generate_private_key(ec.SECP256R1())
    write_key(f"{out}/es256.key.pem", e)
    pn = e.public_key().public_numbers()
    jwks.append({"kty": "EC", "kid": f"{prefix}-es256", "use": "sig", "alg": "ES256", "crv": "P-256",
                 "x": b64u(pn.x.to_bytes(32, "big")), "y": b64u(pn.y.to_bytes(32, "big"))})
    d = ed25519.Ed25519PrivateKey.generate()
    write_key(f"{out}/eddsa.key.pem", d)
    raw = d.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwks.append({"kty": "OKP", "kid": f"{prefix}-eddsa", "use": "sig", "alg": "EdDSA", "crv": "Ed25519", "x": b64u(raw)})
    with open(f"{out}/jwks.json", "w") as f:
        json.dump({"keys": jwks}, f, indent=2)
    with open(f"{out}/hs256.secret", "w") as f:
        f.write(b64u(os.urandom(48)) + "\n")
    tls(out)


def tls(out):
    """A CA and two server certificates (SNI test), valid for 100 years."""
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    later = now + datetime.timedelta(days=36500)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    with open(f"{out}/ca.crt.pem", "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    for name, sans, keytype in [("server", ["localhost", "app.test"], "ec"), ("other", ["other.test"], "rsa")]:
        key = ec.generate_private_key(ec.SECP256R1()) if keytype == "ec" else rsa.generate_private_key(65537, 2048)
        alt = [x509.DNSName(s) for s in sans] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(later)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .sign(ca_key, hashes.SHA256()))
        with open(f"{out}/{name}.crt.pem", "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        write_key(f"{out}/{name}.key.pem", key)


if __name__ == "__main__":
    main()
