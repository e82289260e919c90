"""Encrypted repositories through the command line: init, snapshot, verify, restore, keys, passphrases."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from catalog.keys import KeySlotInUse, LastKeySlot, NotEncrypted, PassphraseRequired, PassphraseWrong
from toolkit.config import SecretUnavailable
from toolkit.lab.corpus import make_volume

from ..conftest import Toolkit

PASS = "first passphrase"  # noqa: S105 (test passphrases)
SECOND = "second passphrase"
MARKER = b"PLANTED-PLAINTEXT-MARKER-41c9"
VOLUME_FILE = "Quarterly!20!Forecast"  # the volume's file name; its display name is "Quarterly Forecast"
OTHER = "cloudvolumes/apps/Payroll.vmdk"


@pytest.fixture(autouse=True)
def _cheap_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLKIT_TESTONLY_WEAKEN_KDF", "1")
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", PASS)


def _datastore(root: Path) -> Path:
    """Two volumes; the first carries MARKER inside 128 KiB of random bytes (stored raw when unencrypted)."""
    make_volume(root, f"cloudvolumes/apps/{VOLUME_FILE}.vmdk", size_mib=4, seed=5, real=False)
    make_volume(root, OTHER, size_mib=4, seed=6, real=False)
    flat = root / "cloudvolumes" / "apps" / f"{VOLUME_FILE}-flat.vmdk"
    block = bytearray(random.Random(9).randbytes(128 << 10))
    block[1000 : 1000 + len(MARKER)] = MARKER
    with flat.open("r+b") as f:
        f.seek(1 << 20)
        f.write(block)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def encrypted(toolkit: Toolkit, tmp_path: Path) -> Toolkit:
    ds = _datastore(tmp_path / "ds1")
    r = toolkit("init", "--encryption", "aes-256-gcm", "--chunk-size", "64K")
    assert r.exit_code == 0, r.stderr
    assert "encrypted with aes-256-gcm" in r.stdout
    assert toolkit("snapshot", str(ds)).exit_code == 0
    return toolkit


def test_snapshot_verify_restore_bit_for_bit(encrypted: Toolkit, tmp_path: Path) -> None:
    config = json.loads((encrypted.repo / "config").read_text())
    assert config["version"] == 2 and config["encryption"]["cipher"] == "aes-256-gcm"
    for args in ((), ("--read-data",), ("--read-data-subset", "50"), ("--volume", "Quarterly*")):
        r = encrypted("verify", *args)
        assert r.exit_code == 0, (args, r.stdout, r.stderr)
    volumes = encrypted.json("volumes")["volumes"]
    assert {v["name"] for v in volumes} == {"Quarterly Forecast", "Payroll"}
    status = encrypted("status")  # reads the newest snapshot document: it must decrypt
    assert status.exit_code in (0, 1) and "error:" not in status.stderr, status.stderr
    out = tmp_path / "restored"
    r = encrypted("restore", "--as-of", "now", "--to", str(out))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert _files(out) == _files(tmp_path / "ds1")


def test_no_plaintext_in_packs_or_documents(encrypted: Toolkit, tmp_path: Path) -> None:
    names = [MARKER, VOLUME_FILE.encode(), b"Quarterly Forecast", b"Payroll"]
    stored = [*encrypted.repo.glob("packs/*/*"), *encrypted.repo.glob("snapshots/*.json")]
    stored += [encrypted.repo / "keys", encrypted.repo / "config"]
    assert len(stored) > 4
    for path in stored:
        blob = path.read_bytes()
        for needle in names:
            assert needle not in blob, (path, needle)
    # The same data in an unencrypted repository shows all of it: the check above can fail.
    plain = Toolkit(tmp_path / "plain")
    assert plain("init", "--chunk-size", "64K").exit_code == 0
    assert plain("snapshot", str(tmp_path / "ds1")).exit_code == 0
    packs = b"".join(p.read_bytes() for p in plain.repo.glob("packs/*/*"))
    docs = b"".join(p.read_bytes() for p in plain.repo.glob("snapshots/*.json"))
    assert MARKER in packs
    assert VOLUME_FILE.encode() in docs and b"Payroll" in docs


def test_wrong_or_missing_passphrase_exits_2(
    encrypted: Toolkit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", "not it")
    r = encrypted("--json", "snapshots")
    assert r.exit_code == PassphraseWrong.exit_code == 2
    assert json.loads(r.stdout)["code"] == "passphrase_wrong"
    assert "passphrase opens none of the 1 key slot(s)" in r.stderr
    assert "Traceback" not in r.stderr
    monkeypatch.delenv("TOOLKIT_PASSPHRASE")
    r = encrypted("--json", "verify")
    assert r.exit_code == PassphraseRequired.exit_code == 2
    assert json.loads(r.stdout)["code"] == "passphrase_required"
    # A passphrase file must be private; a command's output works too.
    pfile = tmp_path / "pass"
    pfile.write_text(PASS + "\n")
    pfile.chmod(0o644)
    r = encrypted("--json", "--passphrase-file", str(pfile), "snapshots")
    assert r.exit_code == SecretUnavailable.exit_code == 2
    assert json.loads(r.stdout)["code"] == "secret_unavailable"
    pfile.chmod(0o600)
    assert encrypted("--passphrase-file", str(pfile), "verify").exit_code == 0
    assert encrypted("--passphrase-command", f"cat {pfile}", "snapshots").exit_code == 0
    assert encrypted("--passphrase-command", "false", "snapshots").exit_code == 2
    # From the configuration file.
    cfg = tmp_path / "toolkit.toml"
    cfg.write_text(f'repository = "{encrypted.repo}"\npassphrase_file = "{pfile}"\n')
    cfg.chmod(0o600)
    assert encrypted("--config", str(cfg), "snapshots").exit_code == 0


def test_key_add_change_remove(encrypted: Toolkit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = encrypted.json("key", "list")["slots"]
    assert len(first) == 1
    monkeypatch.setenv("TOOLKIT_NEW_PASSPHRASE", SECOND)
    added = encrypted.json("key", "add")["added"]
    assert [s["id"] for s in encrypted.json("key", "list")["slots"]] == [first[0]["id"], added]
    monkeypatch.delenv("TOOLKIT_NEW_PASSPHRASE")
    r = encrypted("--json", "key", "add")  # no new passphrase, and no terminal to ask on
    assert r.exit_code == 2 and json.loads(r.stdout)["code"] == "new_passphrase_required"
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", SECOND)
    assert encrypted("verify", "--read-data").exit_code == 0
    # The second passphrase cannot remove its own slot (nothing proves access survives) ...
    r = encrypted("--json", "key", "remove", added)
    assert r.exit_code == KeySlotInUse.exit_code == 2 and json.loads(r.stdout)["code"] == "key_slot_in_use"
    # ... but it can remove the first one; then the first passphrase opens nothing.
    assert encrypted("key", "remove", first[0]["id"]).exit_code == 0
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", PASS)
    assert encrypted("snapshots").exit_code == PassphraseWrong.exit_code
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", SECOND)
    r = encrypted("--json", "key", "remove", added)
    assert r.exit_code == LastKeySlot.exit_code == 2 and json.loads(r.stdout)["code"] == "last_key_slot"
    # change: the slot is replaced, the data untouched.
    newfile = tmp_path / "new"
    newfile.write_text("third passphrase\n")
    newfile.chmod(0o600)
    changed = encrypted.json("key", "change", "--new-passphrase-file", str(newfile))
    assert changed["removed"] == added
    assert encrypted("snapshots").exit_code == PassphraseWrong.exit_code
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", "third passphrase")
    assert encrypted("verify", "--read-data").exit_code == 0
    assert [s["id"] for s in encrypted.json("key", "list")["slots"]] == [changed["added"]]


def test_key_commands_on_an_unencrypted_repository(toolkit: Toolkit) -> None:
    assert toolkit("init").exit_code == 0
    r = toolkit("--json", "key", "list")
    assert r.exit_code == NotEncrypted.exit_code == 2 and json.loads(r.stdout)["code"] == "not_encrypted"
    assert json.loads((toolkit.repo / "config").read_text())["version"] == 1


def test_init_refuses_an_empty_passphrase(toolkit: Toolkit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", "")
    r = toolkit("--json", "init", "--encryption", "chacha20-poly1305")
    assert r.exit_code == 2 and json.loads(r.stdout)["code"] == "passphrase_empty"
    assert not toolkit.repo.exists()  # nothing half-made: the same command can simply be run again
    monkeypatch.setenv("TOOLKIT_PASSPHRASE", PASS)
    assert toolkit("init", "--encryption", "chacha20-poly1305").exit_code == 0


def test_history_prune_repack_rebuild_and_restore_of_a_deleted_volume(toolkit: Toolkit, tmp_path: Path) -> None:
    """The demo's story on an encrypted repository (ChaCha20-Poly1305 this time)."""
    ds = _datastore(tmp_path / "ds1")
    assert toolkit("init", "--encryption", "chacha20-poly1305", "--chunk-size", "64K").exit_code == 0
    assert toolkit("snapshot", str(ds)).exit_code == 0
    original = _files(ds)
    # An update, then an accidental deletion.
    flat = ds / "cloudvolumes" / "apps" / "Payroll-flat.vmdk"
    with flat.open("r+b") as f:
        f.seek(2 << 20)
        f.write(os.urandom(300 << 10))
    assert toolkit("snapshot", str(ds)).exit_code == 0
    for p in (ds / "cloudvolumes" / "apps").glob(f"{VOLUME_FILE}*"):
        p.unlink()
    assert toolkit("snapshot", str(ds)).exit_code == 0
    states = [v["state"] for v in toolkit.json("history", "Quarterly*")["versions"]]
    assert states == ["new", "unchanged", "deleted"]
    pruned = toolkit.json("prune", "--keep-last", "1")
    assert len(pruned["removed"]) == 1  # the first: the second holds the deleted volume's last version
    kept = next(sid for sid, why in pruned["kept"].items() if any("deleted volume" in w for w in why))
    assert toolkit("verify", "--read-data").exit_code == 0
    rebuilt = toolkit("repair", "--rebuild-catalog")
    assert rebuilt.exit_code == 0, rebuilt.stderr
    assert toolkit("verify", "--read-data").exit_code == 0
    out = tmp_path / "restored"
    r = toolkit("restore", "--as-of", kept, "--volume", "Quarterly*", "--to", str(out))
    assert r.exit_code == 0, r.stdout + r.stderr
    restored = _files(out)
    assert restored and all(restored[k] == original[k] for k in restored)


def _pack_problems(toolkit: Toolkit) -> tuple[int, list[dict]]:
    r = toolkit("--json", "verify", "--read-data")
    return r.exit_code, json.loads(r.stdout)["problems"]


def test_a_flipped_bit_anywhere_in_an_encrypted_pack_is_detected(encrypted: Toolkit) -> None:
    packs = sorted(encrypted.repo.glob("packs/*/*"), key=lambda p: p.stat().st_size)
    pack = packs[-1]  # the largest: headers, records (data and manifests), index and footer
    original = pack.read_bytes()
    size = len(original)
    rng = random.Random(int.from_bytes(hashlib.sha256(original).digest()[:4], "big"))
    positions = {0, 9, 15, 16, 20, 40, 63, 64, 80, size // 2, size - 100, size - 30, size - 1}
    positions |= {rng.randrange(size) for _ in range(12)}
    pack.chmod(0o600)
    try:
        for pos in sorted(positions):
            damaged = bytearray(original)
            damaged[pos] ^= 1 << rng.randrange(8)
            pack.write_bytes(bytes(damaged))
            code, problems = _pack_problems(encrypted)
            assert code == 1, pos
            assert any(p.get("pack_id") == pack.name for p in problems), (pos, problems)
    finally:
        pack.write_bytes(original)
    assert encrypted("verify", "--read-data").exit_code == 0


def test_a_copy_of_the_repository_elsewhere_still_opens(encrypted: Toolkit, tmp_path: Path) -> None:
    """The keys travel with the repository: a copy opens with the same passphrase (and only with it)."""
    copy = tmp_path / "copy"
    shutil.copytree(encrypted.repo, copy)
    (copy / "catalog.db").unlink()  # e.g. left out of an off-site copy: rebuilt on open
    for suffix in ("-wal", "-shm"):
        (copy / f"catalog.db{suffix}").unlink(missing_ok=True)
    other = Toolkit(copy)
    assert other("verify", "--read-data").exit_code == 0
    assert len(other.json("snapshots")["snapshots"]) == 1


def _on_a_terminal(args: list[str], answers: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the toolkit with a pseudo-terminal as stdin, answering each passphrase prompt in turn."""
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *args],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    seen, answered = "", 0
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                seen += os.read(master, 1024).decode(errors="replace")
            except OSError:  # the child closed the terminal: it is done
                break
            # Answer only once a prompt is out: the prompt is written after echo is turned off and
            # pending input flushed, so an earlier answer would be lost (and echoed).
            prompts = seen.count("passphrase for") + seen.count("Repeat for confirmation")
            while answered < min(prompts, len(answers)):
                os.write(master, (answers[answered] + "\n").encode())
                answered += 1
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        os.close(master)
    return proc.returncode, seen + out


def test_the_passphrase_is_asked_on_a_terminal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TOOLKIT_PASSPHRASE"}
    repo = str(tmp_path / "repo")
    rc, text = _on_a_terminal(["--repo", repo, "init", "--encryption", "aes-256-gcm"], [PASS, PASS], env)
    assert rc == 0, text
    assert "passphrase for" in text and "Repeat for confirmation" in text
    assert PASS not in text  # not echoed
    rc, text = _on_a_terminal(["--repo", repo, "snapshots"], [PASS], env)
    assert rc == 0, text
    rc, text = _on_a_terminal(["--repo", repo, "snapshots"], ["not it"], env)
    assert rc == PassphraseWrong.exit_code, text
