"""Key slots: the master key of an encrypted repository, wrapped under passphrases.

The repository file ``keys`` (JSON, replaced atomically) holds one or more
slots. Each slot wraps the same 64-byte master key (see :mod:`catalog.crypto`)
with the repository's AEAD under a key derived from a passphrase by scrypt,
whose parameters and salt the slot records. The associated data binds a slot to
its repository, its id and its parameters, so a slot copied from elsewhere or
edited does not open. The repository config records a key check (a keyed hash
of the repository id) that proves an unwrapped key is this repository's.

Slots are added, replaced and removed under the writer lock; the last slot is
never removed. See docs/format.md §11.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from catalog.crypto import CIPHERS, RepoKeys, Unauthentic, new_master_key, seal, unseal
from catalog.errors import Error
from catalog.lock import writer_lock
from catalog.store import write_atomic

KEYS_FILE: Final = "keys"
KEYS_FORMAT: Final = "appstack-toolkit-keys"
KEYS_VERSION: Final = 1
SLOT_AD_MAGIC: Final = b"ASTKSLOT"
SALT_BYTES: Final = 32
SLOT_ID_BYTES: Final = 4  # 8 hex digits: enough to tell a handful of slots apart
KEK_BYTES: Final = 32  # the key a passphrase derives: it wraps the master key

# scrypt bounds accepted from a slot: below them a slot is too weak to trust, above them opening it
# would take more memory than a backup host should give (a damaged or hostile keys file must not
# make the toolkit allocate gigabytes).
KDF_MIN_LOG2_N: Final = 10
KDF_MAX_LOG2_N: Final = 22
KDF_MAX_MEMORY_BYTES: Final = 1 << 30


class PassphraseRequired(Error):
    template = "repository {path} is encrypted and no passphrase was given"
    hint = (
        "set TOOLKIT_PASSPHRASE, pass --passphrase-file FILE or --passphrase-command CMD, "
        "set passphrase_file or passphrase_command in the configuration, or run on a terminal to be asked"
    )
    code = "passphrase_required"


class PassphraseWrong(Error):
    template = "the passphrase opens none of the {count} key slot(s) of {path}"
    hint = "check the passphrase source (TOOLKIT_PASSPHRASE, --passphrase-file, --passphrase-command)"
    code = "passphrase_wrong"


class PassphraseEmpty(Error):
    template = "the {what} is empty"
    hint = "choose a long passphrase; an empty one protects nothing"
    code = "passphrase_empty"


class KeysCorrupt(Error):
    template = "key slots file {path} is unreadable: {detail}"
    hint = "restore the keys file from a copy of the repository; without a key slot nothing can be decrypted"
    code = "keys_corrupt"


class KeyMismatch(Error):
    template = "key slot {slot} of {path} holds a key that is not this repository's (the key check differs)"
    hint = "the keys file belongs to another repository; restore this repository's own keys file"
    code = "key_mismatch"


class KeySlotNotFound(Error):
    template = "repository {path} has no key slot {slot}"
    hint = "list the slots with: toolkit key list"
    code = "key_slot_not_found"


class LastKeySlot(Error):
    template = "key slot {slot} is the only one of {path}; removing it would make the repository unreadable"
    hint = "add another first (toolkit key add), or replace its passphrase with: toolkit key change"
    code = "last_key_slot"


class KeySlotInUse(Error):
    template = "the passphrase given opens key slot {slot}, the one to be removed, and no other"
    hint = "give the passphrase of a slot that stays, so access is proven to survive the removal"
    code = "key_slot_in_use"


class NotEncrypted(Error):
    template = "repository {path} is not encrypted"
    hint = "encryption is chosen when a repository is created: toolkit init --encryption aes-256-gcm"
    code = "not_encrypted"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """scrypt cost parameters, stored with each slot."""

    n: int
    r: int
    p: int

    @property
    def memory_bytes(self) -> int:
        return 128 * self.r * (self.n + self.p)

    def to_json(self) -> dict[str, Any]:
        return {"name": "scrypt", "n": self.n, "r": self.r, "p": self.p}

    def describe(self) -> str:
        return f"scrypt n=2^{self.n.bit_length() - 1} r={self.r} p={self.p} ({self.memory_bytes >> 20} MiB)"

    @classmethod
    def from_json(cls, raw: object) -> KdfParams:
        if not isinstance(raw, dict) or raw.get("name") != "scrypt":
            raise ValueError("kdf is not scrypt")
        n, r, p = raw.get("n"), raw.get("r"), raw.get("p")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (n, r, p)):
            raise ValueError("kdf parameters are not integers")
        params = cls(int(n), int(r), int(p))  # type: ignore[arg-type]
        params.check()
        return params

    def check(self) -> None:
        if self.n & (self.n - 1) or not 1 << KDF_MIN_LOG2_N <= self.n <= 1 << KDF_MAX_LOG2_N:
            raise ValueError(f"scrypt n={self.n} is not a power of two from 2^10 to 2^22")
        if not 1 <= self.r <= 32 or not 1 <= self.p <= 16 or self.memory_bytes > KDF_MAX_MEMORY_BYTES:
            raise ValueError(f"scrypt r={self.r} p={self.p} is out of bounds")


# 128 MiB and about 0.4 s per try on the 2-core benchmark machine (n=2^15, the common floor, is 0.1 s):
# a guess costs an attacker the same memory, which is what makes GPUs and ASICs expensive to use.
DEFAULT_KDF: Final = KdfParams(n=1 << 17, r=8, p=1)
# Only when TOOLKIT_TESTONLY_WEAKEN_KDF=1 (as borg's BORG_TESTONLY_WEAKEN_KDF): test suites open keys hundreds of times.
TEST_KDF: Final = KdfParams(n=1 << KDF_MIN_LOG2_N, r=8, p=1)


@dataclass(frozen=True, slots=True)
class EncryptionConfig:
    """What the repository config records about encryption."""

    cipher: str
    key_check: str  # RepoKeys.key_check() of the master key

    def to_json(self) -> dict[str, Any]:
        return {"cipher": self.cipher, "key_check": self.key_check, "keys": KEYS_FILE}


@dataclass(frozen=True, slots=True)
class KeySlot:
    id: str
    created_at: str
    kdf: KdfParams
    salt: bytes
    cipher: str
    wrapped: bytes  # nonce || master key encrypted || tag

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "kdf": self.kdf.to_json(),
            "salt": self.salt.hex(),
            "cipher": self.cipher,
            "wrapped_key": self.wrapped.hex(),
        }


def derive_key(passphrase: str, salt: bytes, kdf: KdfParams) -> bytes:
    """The key-encryption key a passphrase gives under a slot's salt and parameters."""
    return hashlib.scrypt(
        passphrase.encode("utf-8"),
        salt=salt,
        n=kdf.n,
        r=kdf.r,
        p=kdf.p,
        maxmem=kdf.memory_bytes + (16 << 20),
        dklen=KEK_BYTES,
    )


def _slot_ad(repo_id: str, slot_id: str, cipher: str, kdf: KdfParams, salt: bytes) -> bytes:
    context = {"id": slot_id, "cipher": cipher, "kdf": kdf.to_json(), "salt": salt.hex()}
    return SLOT_AD_MAGIC + bytes.fromhex(repo_id) + json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


def make_slot(master: bytes, passphrase: str, repo_id: str, cipher: str, kdf: KdfParams) -> KeySlot:
    if not passphrase:
        raise PassphraseEmpty(what="new passphrase")
    kdf.check()
    slot_id = os.urandom(SLOT_ID_BYTES).hex()
    salt = os.urandom(SALT_BYTES)
    kek = derive_key(passphrase, salt, kdf)
    wrapped = seal(cipher, kek, master, _slot_ad(repo_id, slot_id, cipher, kdf, salt))
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return KeySlot(slot_id, created, kdf, salt, cipher, wrapped)


def open_slot(slot: KeySlot, passphrase: str, repo_id: str) -> bytes | None:
    """The master key if ``passphrase`` opens ``slot`` (and the slot is intact), else None."""
    kek = derive_key(passphrase, slot.salt, slot.kdf)
    try:
        return unseal(slot.cipher, kek, slot.wrapped, _slot_ad(repo_id, slot.id, slot.cipher, slot.kdf, slot.salt))
    except Unauthentic:
        return None


def keys_path(root: Path) -> Path:
    return root / KEYS_FILE


def read_slots(root: Path, repo_id: str) -> list[KeySlot]:
    path = keys_path(root)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeysCorrupt(path=path, detail="missing") from None
    except (ValueError, UnicodeDecodeError):
        raise KeysCorrupt(path=path, detail="not JSON") from None
    if not isinstance(data, dict) or data.get("format") != KEYS_FORMAT or data.get("version") != KEYS_VERSION:
        raise KeysCorrupt(path=path, detail="not a key slots file of a known version")
    if data.get("repository") != repo_id:
        raise KeysCorrupt(path=path, detail="it belongs to another repository")
    slots = []
    raw_slots = data.get("slots")
    if not isinstance(raw_slots, list) or not raw_slots:
        raise KeysCorrupt(path=path, detail="no key slot")
    for raw in raw_slots:
        try:
            slot = KeySlot(
                str(raw["id"]),
                str(raw["created_at"]),
                KdfParams.from_json(raw["kdf"]),
                bytes.fromhex(raw["salt"]),
                str(raw["cipher"]),
                bytes.fromhex(raw["wrapped_key"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeysCorrupt(path=path, detail=f"a slot is malformed ({exc})") from None
        if slot.cipher not in CIPHERS:
            raise KeysCorrupt(path=path, detail=f"slot {slot.id} names an unknown cipher {slot.cipher!r}")
        slots.append(slot)
    return slots


def write_slots(root: Path, repo_id: str, slots: list[KeySlot]) -> None:
    doc = {
        "format": KEYS_FORMAT,
        "version": KEYS_VERSION,
        "repository": repo_id,
        "slots": [s.to_json() for s in slots],
    }
    write_atomic(root, keys_path(root), json.dumps(doc, indent=2).encode() + b"\n")


def create_keys(
    root: Path, repo_id: str, cipher: str, passphrase: str, kdf: KdfParams
) -> tuple[RepoKeys, EncryptionConfig]:
    """A new master key for a new repository, wrapped in its first slot (``keys`` is written)."""
    if not passphrase:
        raise PassphraseEmpty(what="passphrase")
    keys = RepoKeys(repo_id, cipher, new_master_key())
    write_slots(root, repo_id, [make_slot(keys.master, passphrase, repo_id, cipher, kdf)])
    return keys, EncryptionConfig(cipher, keys.key_check())


def _opened(root: Path, repo_id: str, enc: EncryptionConfig, slot: KeySlot, master: bytes) -> RepoKeys:
    keys = RepoKeys(repo_id, enc.cipher, master)
    if not keys.matches(enc.key_check):
        raise KeyMismatch(slot=slot.id, path=keys_path(root))
    return keys


def unlock(root: Path, repo_id: str, enc: EncryptionConfig, passphrase: str) -> tuple[RepoKeys, str]:
    """(keys, id of the slot the passphrase opened); PassphraseWrong when it opens none."""
    slots = read_slots(root, repo_id)
    for slot in slots:
        master = open_slot(slot, passphrase, repo_id)
        if master is not None:
            return _opened(root, repo_id, enc, slot, master), slot.id
    raise PassphraseWrong(count=len(slots), path=root)


def add_slot(root: Path, keys: RepoKeys, new_passphrase: str, kdf: KdfParams) -> KeySlot:
    """Wrap the master key under one more passphrase."""
    slot = make_slot(keys.master, new_passphrase, keys.repo_id, keys.cipher, kdf)
    with writer_lock(root, "key add") as held:
        slots = read_slots(root, keys.repo_id)
        held.check()
        write_slots(root, keys.repo_id, [*slots, slot])
    return slot


def change_slot(root: Path, keys: RepoKeys, slot_id: str, new_passphrase: str, kdf: KdfParams) -> KeySlot:
    """Replace slot ``slot_id`` (the one the current passphrase opened) by one under ``new_passphrase``."""
    slot = make_slot(keys.master, new_passphrase, keys.repo_id, keys.cipher, kdf)
    with writer_lock(root, "key change") as held:
        slots = read_slots(root, keys.repo_id)
        if not any(s.id == slot_id for s in slots):
            raise KeySlotNotFound(path=root, slot=slot_id)
        held.check()
        write_slots(root, keys.repo_id, [slot if s.id == slot_id else s for s in slots])
    return slot


def remove_slot(root: Path, keys: RepoKeys, slot_id: str, passphrase: str) -> list[KeySlot]:
    """Remove slot ``slot_id``; ``passphrase`` must open a slot that stays. Returns the slots left."""
    with writer_lock(root, "key remove") as held:
        slots = read_slots(root, keys.repo_id)
        if not any(s.id == slot_id for s in slots):
            raise KeySlotNotFound(path=root, slot=slot_id)
        if len(slots) == 1:
            raise LastKeySlot(slot=slot_id, path=root)
        left = [s for s in slots if s.id != slot_id]
        if not any(open_slot(s, passphrase, keys.repo_id) == keys.master for s in left):
            raise KeySlotInUse(slot=slot_id)
        held.check()
        write_slots(root, keys.repo_id, left)
    return left


# -- keys unlocked by the caller, for code that opens a repository by its path ---------

_unlocked: ContextVar[tuple[RepoKeys, ...]] = ContextVar("unlocked_keys", default=())


@contextlib.contextmanager
def unlocked(*keys: RepoKeys | None) -> Iterator[None]:
    """Within this block, a repository whose keys are not handed to it uses these (matched by repository id).

    For code that builds a repository from its path alone (the catalog rebuild);
    everything else is handed its keys explicitly.
    """
    token = _unlocked.set(_unlocked.get() + tuple(k for k in keys if k is not None))
    try:
        yield
    finally:
        _unlocked.reset(token)


def unlocked_keys(repo_id: str) -> RepoKeys | None:
    return next((k for k in _unlocked.get() if k.repo_id == repo_id), None)
