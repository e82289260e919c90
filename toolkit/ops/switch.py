"""Move desktops from a damaged AppStack or package to its restored twin, through App Volumes Manager.

The twin is typically restored beside the damaged volume (``restore --rename … --register
--restore-assignments``), so on 2.x it already has the damaged one's assignments; the switch makes
sure of that, then takes the damaged one away:

- 2.x: each entity assigned to the FROM AppStack is assigned to the TO AppStack (unless it is
  already), then unassigned from FROM (``POST /cv_api/assignments``, action_type assign/unassign).
  Nothing is taken from FROM unless every one of its assignments was given to TO first, so no
  desktop is ever left with neither volume.
- 4.x: the manager gives an entity an application once (a second assignment within it is refused
  as a duplicate) and has no update for assignments, so each assignment pinned to the FROM package
  is deleted (``DELETE /app_volumes/app_assignments``), then created again pinned to the TO package
  with the same entities, filters and delivery. An entity is without the application at most for
  the two calls between the delete and the create; if the manager refuses the create, the
  assignment is put back on FROM at once. The application's CURRENT marker then moves to TO when
  it points at FROM, unless a pinned assignment failed. Assignments made through the marker stay
  as they are: they follow the marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from catalog.errors import Error
from toolkit.avm import AssignmentOutcome, AvmAssignment, is_assigned, recorded_assignments

if TYPE_CHECKING:
    from toolkit.avm import AvmVersion, AvmVolume

SWITCHABLE: Final = ("appstack", "package")  # writables belong to one user each and have no assignments
DONE: Final = frozenset({"moved", "kept", "would move", "would keep"})  # an assignment's statuses that are not problems
NO_PATH: Final = "the manager lists it without the entity's directory path; assign it to TO by hand"
GIVEN: Final = frozenset({"created", "present"})  # what restore_assignments reports for an assignment TO has now


class SwitchVolumeNotFound(Error):
    template = "the App Volumes Manager of site {site!r} lists no AppStack or package {name!r}"
    hint = "give its name as the manager shows it, or DATASTORE/PATH of its descriptor"
    code = "switch_volume_not_found"


class SwitchVolumeAmbiguous(Error):
    template = "{name!r} names {count} volumes in the App Volumes Manager of site {site!r}: {keys}"
    hint = "name one by DATASTORE/PATH of its descriptor, for example {first!r}"
    code = "switch_volume_ambiguous"


class SwitchSameVolume(Error):
    template = "--from and --to both name {key}"
    hint = "--to names the volume desktops get instead, such as the one restored with --rename '{{name}} restored'"
    code = "switch_same_volume"


class SwitchMismatch(Error):
    template = "cannot switch desktops from {source!r} to {target!r}: {detail}"
    hint = "switch between two AppStacks (2.x) or two packages of one application (4.x)"
    code = "switch_mismatch"


class Manager(Protocol):
    def version(self) -> AvmVersion: ...

    def volumes(self) -> list[AvmVolume]: ...

    def writables(self) -> list[AvmVolume]: ...

    def assignments(self, volume: AvmVolume) -> tuple[dict[str, Any], ...]: ...

    def restore_assignments(self, volume: AvmVolume, recorded: dict[str, Any]) -> list[AssignmentOutcome]: ...

    def unassign_appstack(self, volume: AvmVolume, entities: Sequence[tuple[str, str]]) -> str: ...

    def delete_assignments(self, ids: Sequence[int]) -> tuple[set[int], set[int]]: ...

    def current_marker(self, product_id: int) -> tuple[int, int] | None: ...

    def set_current_marker(self, product_id: int, package_id: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Move:
    """One assignment of the FROM volume, and what became of it."""

    who: str
    via: str  # appstack (2.x) | package: pinned to it (4.x) | marker: through the CURRENT marker (4.x)
    to: str  # on TO: created | present | failed | would create | marker
    source: str  # on FROM: removed | kept | put back (4.x: re-created after TO refused it) | failed | would remove
    status: str  # moved | kept | failed | not switched | would move | would keep | would fail
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "who": self.who,
            "via": self.via,
            "to": self.to,
            "from": self.source,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class MarkerMove:
    """The application's CURRENT marker (4.x): where it pointed, and what the switch did with it."""

    status: str  # moved | would move | failed | not moved | on TO | elsewhere
    package_id: int  # where it points now
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "not moved")

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "package_id": self.package_id, "detail": self.detail}


@dataclass
class SwitchReport:
    site: str
    flavour: str
    source: AvmVolume
    target: AvmVolume
    dry_run: bool
    moves: list[Move] = field(default_factory=list)
    marker: MarkerMove | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(m.status in DONE for m in self.moves) and (self.marker is None or self.marker.ok)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "site": self.site,
            "flavour": self.flavour,
            "from": _volume_json(self.source),
            "to": _volume_json(self.target),
            "assignments": [m.to_json() for m in self.moves],
            "marker": self.marker.to_json() if self.marker else None,
            "notes": self.notes,
        }


def volume_key(v: AvmVolume) -> str:
    """DATASTORE/PATH of a volume's descriptor, as the manager lists its first usable copy."""
    return f"{v.datastore}/{v.relpath}"


def _volume_json(v: AvmVolume) -> dict[str, Any]:
    return {"id": v.id, "kind": v.kind, "name": v.name, "key": volume_key(v), "status": v.status}


def find_volume(listed: Sequence[AvmVolume], name: str, site: str) -> AvmVolume:
    """The one volume the manager lists under ``name``: its name, its path, or DATASTORE/PATH."""
    hits = [v for v in listed if name in (v.name, v.relpath, volume_key(v))]
    if not hits:
        raise SwitchVolumeNotFound(site=site, name=name)
    if len(hits) > 1:
        keys = sorted(volume_key(v) for v in hits)
        raise SwitchVolumeAmbiguous(name=name, count=len(hits), site=site, keys=", ".join(keys), first=keys[0])
    return hits[0]


def check_pair(source: AvmVolume, target: AvmVolume) -> None:
    """Refuse a switch between a volume and itself, or between volumes desktops cannot trade for each other."""
    if (source.kind, source.id) == (target.kind, target.id):
        raise SwitchSameVolume(key=volume_key(source))
    for v in (source, target):
        if v.kind not in SWITCHABLE:
            detail = f"{v.name!r} is a {v.kind} volume; only AppStacks and packages are assigned"
            raise SwitchMismatch(source=source.name, target=target.name, detail=detail)
    if source.kind != target.kind:
        detail = f"they are of different kinds ({source.kind} and {target.kind})"
        raise SwitchMismatch(source=source.name, target=target.name, detail=detail)
    if source.kind == "package":
        a, b = _product_id(source), _product_id(target)
        if not a or a != b:
            detail = f"they are packages of different applications (application ids {a} and {b})"
            raise SwitchMismatch(source=source.name, target=target.name, detail=detail)


def _product_id(v: AvmVolume) -> int:
    return int(v.record.get("app_product_id") or 0)


def switch(manager: Manager, site: str, from_name: str, to_name: str, *, dry_run: bool = False) -> SwitchReport:
    """Move the desktops of volume ``from_name`` to volume ``to_name`` (see the module's docstring)."""
    flavour = manager.version().flavour
    listed = [*manager.volumes(), *manager.writables()]
    source = find_volume(listed, from_name, site)
    target = find_volume(listed, to_name, site)
    check_pair(source, target)
    report = SwitchReport(site, flavour, source, target, dry_run)
    rows = [r for r in manager.assignments(source) if isinstance(r, dict)]
    pairs = list(zip(rows, recorded_assignments({"id": source.id, "assignments": rows}), strict=True))
    give = [(r, a) for r, a in pairs if a.via != "marker"]  # 2.x: all; 4.x: those pinned to FROM
    through_marker = [a for _, a in pairs if a.via == "marker"]
    marker = manager.current_marker(_product_id(source)) if source.kind == "package" else None
    report.notes += _notes(source, target)

    if dry_run:
        target_rows = manager.assignments(target) if give else ()
        report.moves = [_planned(a, target_rows, target) for _, a in give]
        report.moves += [_marker_kept(a, "would keep", marker, source, target) for a in through_marker]
        if marker is not None:
            report.marker = _marker_plan(marker, source, target)
        return report

    if source.kind == "package":
        return _switch_packages(manager, report, give, through_marker, marker)

    # 2.x: 1. give TO every assignment FROM has (those already there are left alone)
    outcomes: list[AssignmentOutcome] = []
    if give:
        try:
            outcomes = manager.restore_assignments(target, {"id": source.id, "assignments": [r for r, _ in give]})
        except Error as exc:
            outcomes = [AssignmentOutcome(a.who, "failed", f"the manager failed: {exc}") for _, a in give]
    refused = [o for o in outcomes if o.status not in GIVEN]
    if refused:
        why = f"FROM kept: {len(refused)} assignment(s) could not be given to TO"
        for (_, a), o in zip(give, outcomes, strict=True):
            if o.status in GIVEN:
                report.moves.append(Move(a.who, _via(a), o.status, "kept", "not switched", why))
            else:
                report.moves.append(Move(a.who, _via(a), "failed", "kept", "failed", o.detail))
        return report
    # 2. then take it from FROM
    if give:
        report.moves[:0] = _take_away(manager, source, give, outcomes)
    return report


def _switch_packages(
    manager: Manager,
    report: SwitchReport,
    give: list[tuple[dict[str, Any], AvmAssignment]],
    through_marker: list[AvmAssignment],
    marker: tuple[int, int] | None,
) -> SwitchReport:
    """4.x: move each pinned assignment (delete, then create on TO; put back on FROM if refused), then the marker."""
    source, target = report.source, report.target
    report.moves = [_move_pinned(manager, source, target, row, a) for row, a in give]
    lost = [m.who for m in report.moves if m.source == "failed" and m.to == "failed"]
    if lost:
        report.notes.append(
            f"ASSIGN BY HAND: {', '.join(lost)} now {'has' if len(lost) == 1 else 'have'} neither {source.name!r} "
            f"nor {target.name!r}; the manager refused to put {'it' if len(lost) == 1 else 'them'} back on FROM"
        )
    failed = [m for m in report.moves if m.status not in DONE]
    if failed:
        why = f"FROM kept: {len(failed)} pinned assignment(s) could not be moved to TO"
        report.moves += [Move(a.who, "marker", "marker", "kept", "not switched", why) for a in through_marker]
        if marker is not None:
            report.marker = (
                MarkerMove("not moved", marker[1], f"still points at FROM (package id {marker[1]}): {why}")
                if marker[1] == source.id
                else _marker_plan(marker, source, target)
            )
        return report
    if marker is not None and marker[1] == source.id:
        try:
            manager.set_current_marker(_product_id(source), target.id)
            detail = f"moved from FROM (package id {source.id}) to TO (package id {target.id})"
            report.marker = MarkerMove("moved", target.id, detail)
        except Error as exc:
            report.marker = MarkerMove("failed", source.id, f"still points at FROM (package id {source.id}): {exc}")
    elif marker is not None:
        report.marker = _marker_plan(marker, source, target)
    status = "kept" if report.marker is None or report.marker.ok else "not switched"
    report.moves += [_marker_kept(a, status, marker, source, target, report.marker) for a in through_marker]
    return report


def _move_pinned(manager: Manager, source: AvmVolume, target: AvmVolume, row: dict[str, Any], a: AvmAssignment) -> Move:
    """4.x: delete one assignment pinned to FROM, create it pinned to TO, and put it back on FROM if that fails."""
    if not a.entities:
        return Move(a.who, "package", "failed", "kept", "failed", NO_PATH)
    ident = str(row.get("id", ""))
    if not ident.isdigit():
        return Move(a.who, "package", "failed", "kept", "failed", "the manager lists it without an id")
    try:
        deleted, _kept = manager.delete_assignments([int(ident)])
        problem = "" if int(ident) in deleted else "the manager did not delete it"
    except Error as exc:
        problem = str(exc)
    if problem:
        return Move(
            a.who, "package", "failed", "kept", "failed", f"not removed from FROM, so not given to TO: {problem}"
        )
    recorded = {"id": source.id, "assignments": [row]}
    given = _give(manager, target, recorded, a)
    if given.status in GIVEN:
        return Move(a.who, "package", given.status, "removed", "moved", given.detail)
    back = _give(manager, source, recorded, a)
    if back.status in GIVEN:
        return Move(a.who, "package", "failed", "put back", "failed", f"{given.detail}; put back on FROM")
    detail = (
        f"NOT ASSIGNED: removed from FROM, then {given.detail}; putting it back on FROM failed too: {back.detail}; "
        "assign it in the manager"
    )
    return Move(a.who, "package", "failed", "failed", "failed", detail)


def _give(manager: Manager, volume: AvmVolume, recorded: dict[str, Any], a: AvmAssignment) -> AssignmentOutcome:
    try:
        [outcome] = manager.restore_assignments(volume, recorded)
    except Error as exc:
        return AssignmentOutcome(a.who, "failed", f"the manager failed: {exc}")
    return outcome


def _via(a: AvmAssignment) -> str:
    return "appstack" if a.via == "volume" else a.via


def _planned(a: AvmAssignment, target_rows: Sequence[dict[str, Any]], target: AvmVolume) -> Move:
    if not a.entities:
        return Move(a.who, _via(a), "failed", "kept", "would fail", NO_PATH)
    if is_assigned(target_rows, a, target):
        return Move(a.who, _via(a), "present", "would remove", "would move", "already assigned to TO")
    if target.kind == "package":
        detail = "would be deleted from FROM, then created on TO (put back on FROM if the manager refuses it)"
        return Move(a.who, _via(a), "would create", "would remove", "would move", detail)
    return Move(a.who, _via(a), "would create", "would remove", "would move")


def _marker_kept(
    a: AvmAssignment,
    status: str,
    marker: tuple[int, int] | None,
    source: AvmVolume,
    target: AvmVolume,
    moved: MarkerMove | None = None,
) -> Move:
    if moved is not None and moved.status == "moved":
        detail = f"through the CURRENT marker, now on package id {target.id}"
    elif marker is not None and marker[1] == source.id and status == "would keep":
        detail = f"through the CURRENT marker, which would move to package id {target.id}"
    else:
        detail = f"through the CURRENT marker, which points at package id {marker[1] if marker else '?'}"
    return Move(a.who, "marker", "marker", "kept", status, detail)


def _marker_plan(marker: tuple[int, int], source: AvmVolume, target: AvmVolume) -> MarkerMove:
    """What a dry run would do with the marker, or what is said of a marker the switch leaves alone."""
    package_id = marker[1]
    if package_id == source.id:
        detail = f"points at FROM (package id {source.id}); would move to TO (package id {target.id})"
        return MarkerMove("would move", package_id, detail)
    if package_id == target.id:
        return MarkerMove("on TO", package_id, f"already points at TO (package id {target.id})")
    return MarkerMove("elsewhere", package_id, f"points at package id {package_id}, neither FROM nor TO; left alone")


def _take_away(
    manager: Manager,
    source: AvmVolume,
    give: list[tuple[dict[str, Any], AvmAssignment]],
    outcomes: list[AssignmentOutcome],
) -> list[Move]:
    """2.x: unassign from FROM each entity TO now has."""
    moves: list[Move] = []
    problems: list[str] = []
    for _, a in give:
        try:
            problems.append(manager.unassign_appstack(source, a.entities))
        except Error as exc:
            problems.append(str(exc))
    try:
        left = manager.assignments(source)
    except Error as exc:  # what the manager holds now is unknown: none is reported removed
        left, unknown = (), f"could not list FROM's assignments again: {exc}"
    else:
        unknown = ""
    for (_, a), o, problem in zip(give, outcomes, problems, strict=True):
        still = "the manager still lists it on FROM" if is_assigned(left, a, source) else ""
        moves.append(_taken(a, o, problem or unknown or still))
    return moves


def _taken(a: AvmAssignment, o: AssignmentOutcome, problem: str) -> Move:
    given = "already assigned to TO" if o.status == "present" else o.detail
    if problem:
        return Move(a.who, _via(a), o.status, "failed", "failed", f"on TO too, but not removed from FROM: {problem}")
    return Move(a.who, _via(a), o.status, "removed", "moved", given)


def _notes(source: AvmVolume, target: AvmVolume) -> list[str]:
    notes = []
    counts = ("mount_count", "attachments_total", "attachment_count")
    mounts = max(int(source.record.get(k) or 0) for k in counts)
    if source.attached or mounts:
        notes.append(
            f"{source.name!r} is attached to {mounts or 'some'} desktop(s): they get {target.name!r} at their next "
            "logon; delete it in the manager once none has it attached"
        )
    if target.status.lower() != "enabled":
        notes.append(f"the manager lists {target.name!r} as {target.status!r}, not enabled")
    return notes
