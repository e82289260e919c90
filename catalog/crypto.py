"""Encryption at rest: authenticated encryption of records and documents, keyed chunk ids.

Used only by encrypted repositories (``toolkit init --encryption …``); an
unencrypted repository never touches this module. See docs/format.md §11.

- The master key is 64 random bytes: the first 32 are the encryption key, the
  last 32 the id key. It is stored only wrapped in passphrase key slots
  (:mod:`catalog.keys`).
- Records (data chunks and manifests) and snapshot documents are encrypted with
  an AEAD (AES-256-GCM by default, or ChaCha20-Poly1305) under a random 96-bit
  nonce each. The associated data binds each ciphertext to its repository and
  to what it is: a record to its type, codec, raw size and chunk id; a
  document to its kind. A record moved under another chunk id, turned into a
  manifest, or copied from another repository fails authentication.
- ``chunk_id = BLAKE2b-128(key = id key, SHA-256(raw))``: equal chunks still get
  equal ids (deduplication works) but an id says nothing about the content to
  anyone without the key. Deriving it from the SHA-256 (which the file digest
  needs anyway) lets a datastore host that only hashes (``toolkit/esxi_helper.py``)
  name a block without sending it.
- The per-record SHA-256 field of packs and of the catalog is sealed:
  ``SHA-256 XOR BLAKE2b-256(key = id key, chunk_id)``, so it reveals nothing either,
  while the catalog can still put a file digest together from it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import TYPE_CHECKING, Final

from catalog.types import CHUNK_ID_BYTES, ChunkId

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

AES_256_GCM: Final = "aes-256-gcm"
CHACHA20_POLY1305: Final = "chacha20-poly1305"
CIPHERS: Final = (AES_256_GCM, CHACHA20_POLY1305)
# Measured by benchmarks/bench_crypto.py on this project's 2-core machine (AES-NI): AES-256-GCM
# encrypts 1 MiB records at about 5.5 GB/s, ChaCha20-Poly1305 at about 3.1 GB/s. ChaCha20 is the
# choice for CPUs without AES instructions.
DEFAULT_CIPHER: Final = AES_256_GCM
CHUNK_ID_SCHEME: Final = "blake2b-128-keyed-sha256"  # what config's "chunk_id" says in an encrypted repository

KEY_BYTES: Final = 32  # AES-256 and ChaCha20 both take 256-bit keys
MASTER_KEY_BYTES: Final = 2 * KEY_BYTES  # encryption key + id key
NONCE_BYTES: Final = 12  # 96-bit random nonce per ciphertext (both AEADs' native size)
TAG_BYTES: Final = 16
OVERHEAD: Final = NONCE_BYTES + TAG_BYTES  # bytes an encrypted record or document adds

RECORD_AD_MAGIC: Final = b"ASTKREC1"
DOCUMENT_AD_MAGIC: Final = b"ASTKDOC1"
RECORD_AD: Final = struct.Struct("<8s16sBBI16s")  # magic, repository id, type, codec, raw_size, chunk_id

_PERSON_CHUNK_ID: Final = b"astk-chunk-id"  # BLAKE2b personalisation: one key, separate functions
_PERSON_SHA_SEAL: Final = b"astk-sha-seal"
_PERSON_KEY_CHECK: Final = b"astk-key-check"


class Unauthentic(Exception):
    """A ciphertext failed authentication: damaged, or not written under this key and context."""


def new_aead(cipher: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    """The AEAD object of ``cipher`` (imported on demand: unencrypted repositories never load it)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    if len(key) != KEY_BYTES:
        raise ValueError("an AEAD key is 32 bytes")
    if cipher == AES_256_GCM:
        return AESGCM(key)
    if cipher == CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown cipher {cipher!r}")


def seal(cipher: str, key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """nonce || ciphertext || tag, under a fresh random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + new_aead(cipher, key).encrypt(nonce, plaintext, associated)


def unseal(cipher: str, key: bytes, blob: bytes, associated: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output; :class:`Unauthentic` if it does not authenticate."""
    return _open(new_aead(cipher, key), blob, associated)


def _open(aead: AESGCM | ChaCha20Poly1305, blob: bytes | memoryview, associated: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag

    if len(blob) < OVERHEAD:
        raise Unauthentic("shorter than a nonce and a tag")
    view = memoryview(blob)  # no copy of a chunk-sized ciphertext
    try:
        return aead.decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], associated)
    except InvalidTag:
        raise Unauthentic("authentication tag does not match") from None


class RepoKeys:
    """The unlocked keys of one encrypted repository. Thread-safe; never printed."""

    __slots__ = ("_aead", "_enc_key", "_id_key", "_repo_id", "cipher", "repo_id")

    def __init__(self, repo_id: str, cipher: str, master: bytes) -> None:
        if len(master) != MASTER_KEY_BYTES:
            raise ValueError("a master key is 64 bytes")
        self.repo_id = repo_id
        self.cipher = cipher
        self._repo_id = bytes.fromhex(repo_id)
        if len(self._repo_id) != 16:
            raise ValueError("a repository id is 128 bits")
        self._enc_key = master[:KEY_BYTES]
        self._id_key = master[KEY_BYTES:]
        self._aead = new_aead(cipher, self._enc_key)

    def __repr__(self) -> str:
        return f"RepoKeys(repo_id={self.repo_id!r}, cipher={self.cipher!r})"

    @property
    def master(self) -> bytes:
        """The master key (for wrapping it in another key slot)."""
        return self._enc_key + self._id_key

    def key_check(self) -> str:
        """32 hex digits recorded in the repository config: proves a key slot holds this repository's key."""
        return hashlib.blake2b(self._repo_id, digest_size=16, key=self.master, person=_PERSON_KEY_CHECK).hexdigest()

    def matches(self, key_check: str) -> bool:
        return hmac.compare_digest(self.key_check(), key_check)

    # -- ids and the SHA-256 field --------------------------------------------

    def chunk_id(self, sha256: bytes) -> ChunkId:
        """The chunk id of content whose SHA-256 is ``sha256``."""
        return ChunkId(
            hashlib.blake2b(sha256, digest_size=CHUNK_ID_BYTES, key=self._id_key, person=_PERSON_CHUNK_ID).digest()
        )

    def identify(self, raw: bytes | memoryview) -> tuple[ChunkId, bytes]:
        """(chunk id, SHA-256) of raw bytes."""
        sha = hashlib.sha256(raw).digest()
        return self.chunk_id(sha), sha

    def seal_sha256(self, chunk_id: bytes, sha256: bytes) -> bytes:
        """The SHA-256 field as stored in packs and in the catalog. Its own inverse (a keyed XOR pad)."""
        pad = hashlib.blake2b(chunk_id, digest_size=32, key=self._id_key, person=_PERSON_SHA_SEAL).digest()
        return (int.from_bytes(sha256, "big") ^ int.from_bytes(pad, "big")).to_bytes(32, "big")

    unseal_sha256 = seal_sha256

    # -- records --------------------------------------------------------------

    def record_ad(self, chunk_id: bytes, type_: int, codec: int, raw_size: int) -> bytes:
        return RECORD_AD.pack(RECORD_AD_MAGIC, self._repo_id, type_, codec, raw_size, chunk_id)

    def encrypt_record(self, chunk_id: bytes, type_: int, codec: int, raw_size: int, data: bytes) -> bytes:
        """The stored bytes of a record: nonce || ciphertext of ``data`` (the encoded chunk) || tag."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, self.record_ad(chunk_id, type_, codec, raw_size))

    def decrypt_record(
        self, chunk_id: bytes, type_: int, codec: int, raw_size: int, stored: bytes | memoryview
    ) -> bytes:
        return _open(self._aead, stored, self.record_ad(chunk_id, type_, codec, raw_size))

    # -- documents ------------------------------------------------------------

    def document_ad(self, kind: str) -> bytes:
        return DOCUMENT_AD_MAGIC + self._repo_id + kind.encode()

    def encrypt_document(self, kind: str, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data, self.document_ad(kind))

    def decrypt_document(self, kind: str, blob: bytes) -> bytes:
        return _open(self._aead, blob, self.document_ad(kind))


def new_master_key() -> bytes:
    return os.urandom(MASTER_KEY_BYTES)
