"""The repository's Ed25519 keys: the private key that signs the manifest, its public half.

The public key's file is one line, ``ed25519 KEYID BASE64(raw key)``; KEYID is the first 8
bytes of the raw key's SHA-256, in hex. The boot loader image carries that line
(lab.build.bootloader), which is why this module stands alone: building a boot loader needs
the key, not the manifest format or the repository.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from lab.artifacts import default_root
from lab.build.osrepo.files import fsync_dir, write_atomic, write_temp


class RepoError(Exception):
    """A repository, manifest, key or server problem, with what to do about it."""


def default_key_path() -> Path:
    """UCVM_REPO_KEY, else ``<artifact store root>/repo-key/ed25519``."""
    if os.environ.get("UCVM_REPO_KEY"):
        return Path(os.environ["UCVM_REPO_KEY"])
    return default_root() / "repo-key" / "ed25519"


def keyid_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).digest()[:8].hex()


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # the raw 32-byte Ed25519 public key

    @property
    def keyid(self) -> str:
        return keyid_of(self.raw)

    def line(self) -> str:
        """The public key file's one line: ``ed25519 KEYID BASE64(raw key)``."""
        return f"ed25519 {self.keyid} {base64.b64encode(self.raw).decode()}"

    @classmethod
    def from_line(cls, text: str, source: str = "public key") -> PublicKey:
        fields = text.strip().split(" ")
        try:
            raw = base64.b64decode(fields[2], validate=True) if len(fields) == 3 else b""
        except ValueError:
            raw = b""
        if fields[0] != "ed25519" or len(raw) != 32:
            raise RepoError(f"{source}: expected one line 'ed25519 KEYID BASE64(32-byte key)'")
        key = cls(raw)
        if fields[1] != key.keyid:
            raise RepoError(f"{source}: KEYID {fields[1]} does not match the key ({key.keyid})")
        return key

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        try:
            return cls.from_line(path.read_text(), str(path))
        except OSError as error:
            raise RepoError(
                f"{path}: cannot read the public key ({error.strerror}): set UCVM_REPO_KEY to "
                "the key that signs the repository (KEY.pub beside it suffices for reading)"
            ) from error

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """The repository's Ed25519 private key; its file is PKCS#8 PEM, mode 0600."""

    def __init__(self, private: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._private = private
        self.path = path
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def public_line(self) -> str:
        return self.public.line()

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            mode = path.stat().st_mode & 0o777
            data = path.read_bytes()
        except FileNotFoundError as error:
            raise RepoError(
                f"no repository key at {path}: set UCVM_REPO_KEY to the key that signs it"
            ) from error
        except OSError as error:
            raise RepoError(
                f"{path}: cannot read the repository key ({error.strerror}): set UCVM_REPO_KEY "
                "to the private key file (PEM) that signs the repository"
            ) from error
        if mode & 0o077:
            raise RepoError(f"{path}: private key has mode {mode:04o}: chmod 600 {path}")
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except ValueError as error:
            raise RepoError(f"{path}: not a PEM Ed25519 private key ({error})") from error
        if not isinstance(private, Ed25519PrivateKey):
            raise RepoError(f"{path}: not an Ed25519 private key")
        return cls(private, path)

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the key at ``path``, or make one there (directory 0700, file 0600) and write
        its public line beside it in ``path.pub``. Two processes creating it at once agree."""
        if path.exists():
            return cls.load(path)
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = cls.generate()
        pem = key._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temp = write_temp(path.parent, pem, mode=0o600)
        try:
            os.link(temp, path)  # never replaces a key another process just made
        except FileExistsError:
            return cls.load(path)
        finally:
            temp.unlink()
        fsync_dir(path.parent)
        write_atomic(path.with_name(path.name + ".pub"), (key.public_line() + "\n").encode())
        return cls.load(path)
