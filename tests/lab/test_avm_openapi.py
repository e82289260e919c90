"""Every documented response the AVM simulator serves must match the vendor's OpenAPI document.

The vendor publishes Swagger 2.0 documents (2.17 for the 2.x flavour, 2512 for 4.x). They are
converted here to OpenAPI 3.0 and checked with openapi-core against real HTTP exchanges with
the simulator. The conversion is faithful except for the short, reasoned list in
``KNOWN_DEVIATIONS``; the negative tests at the end show the validator does reject wrong shapes.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import DataValidationError

from toolkit.avm import AvmClient
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.avm_sim.model import Volume
from toolkit.ops.switch import switch

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

SPEC_FILES: Final = {"2.x": "app-volumes-2.17.0.json", "4.x": "app-volumes-2512.json"}
REPO_SPEC_DIR: Final = Path(__file__).parents[1] / "data" / "openapi"
SHARED_SPEC_DIR: Final = Path(__file__).parents[3] / "shared" / "reference" / "openapi"
# Read at import: the suite's environment-cleaning fixtures strip TOOLKIT_* before tests run.
ENV_SPEC_DIR: Final = os.environ.get("TOOLKIT_OPENAPI_DIR")
PASSWORD: Final = "lab-pass-1"  # noqa: S105 - same as conftest.PASSWORD

# Where the simulator knowingly departs from the documents, and why. Nothing else is relaxed.
KNOWN_DEVIATIONS: Final = {
    "WritableState may be null": (
        "the field is 'the current backup operation state if present' and its enum has no idle value; "
        "Swagger 2.0 cannot express null, so an idle writable's state is null"
    ),
    "/health_check answers text/plain": (
        "the manager returns a plain-text status line; the document only inherits the global "
        "application/json media type"
    ),
    "a property whose vendor example is null may be null": (
        "the vendor's own examples show null there (app_package_id of a marker assignment, keynow)"
    ),
}


# --- locating and converting the documents ------------------------------------------------------


def spec_dirs() -> list[Path]:
    dirs = [REPO_SPEC_DIR, SHARED_SPEC_DIR]
    if ENV_SPEC_DIR:
        dirs.append(Path(ENV_SPEC_DIR))
    return dirs


def load_swagger(flavour: str) -> dict[str, Any]:
    name = SPEC_FILES[flavour]
    for folder in spec_dirs():
        if (folder / name).is_file():
            doc: dict[str, Any] = json.loads((folder / name).read_text(encoding="utf-8"))
            return doc
    pytest.fail(f"vendor OpenAPI document {name} not found in any of {[str(d) for d in spec_dirs()]}")


_VERBATIM: Final = frozenset({"example", "enum", "default", "description", "title", "required"})


def convert_schema(node: Any) -> Any:
    """Swagger 2.0 schema → OpenAPI 3.0 schema: ``$ref`` targets move, null examples mean nullable."""
    if isinstance(node, list):
        return [convert_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref":
            out[key] = value.replace("#/definitions/", "#/components/schemas/")
        elif key == "properties":
            out[key] = {name: convert_schema(prop) for name, prop in value.items()}
        elif key in _VERBATIM:
            out[key] = copy.deepcopy(value)
        elif not key.startswith("x-"):
            out[key] = convert_schema(value)
    if "example" in node and node["example"] is None and "$ref" not in node:
        out["nullable"] = True
    return out


def convert_parameter(param: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in param:
        return {"$ref": param["$ref"].replace("#/parameters/", "#/components/parameters/")}
    schema = {k: param[k] for k in ("type", "format", "items", "enum", "default") if k in param}
    out = {"name": param["name"], "in": param["in"], "schema": convert_schema(schema)}
    if param.get("description"):
        out["description"] = param["description"]
    if param.get("required") or param["in"] == "path":
        out["required"] = True
    return out


def convert_response(response: dict[str, Any], media_types: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": response.get("description", "")}
    if "schema" in response:
        schema = convert_schema(response["schema"])
        out["content"] = {mt: {"schema": schema} for mt in media_types}
    if "headers" in response:
        out["headers"] = {
            name: {"schema": {k: v for k, v in h.items() if k in ("type", "format")}}
            for name, h in response["headers"].items()
        }
    return out


def convert_operation(op: dict[str, Any], default_media: list[str]) -> dict[str, Any]:
    new: dict[str, Any] = {k: op[k] for k in ("summary", "description", "tags", "operationId") if k in op}
    params = []
    for param in op.get("parameters") or []:
        if param.get("in") == "body":
            body_schema = convert_schema(param.get("schema", {}))
            new["requestBody"] = {"content": {"application/json": {"schema": body_schema}}}
        else:
            params.append(convert_parameter(param))
    if params:
        new["parameters"] = params
    media = op.get("produces") or default_media
    new["responses"] = {str(code): convert_response(r, media) for code, r in op["responses"].items()}
    return new


def swagger2_to_openapi3(doc: dict[str, Any]) -> dict[str, Any]:
    default_media = doc.get("produces", ["application/json"])
    paths = {
        path: {method: convert_operation(op, default_media) for method, op in ops.items()}
        for path, ops in doc["paths"].items()
    }
    components = {
        "schemas": {name: convert_schema(s) for name, s in doc.get("definitions", {}).items()},
        "parameters": {
            name: convert_parameter(p) for name, p in doc.get("parameters", {}).items() if p.get("in") != "body"
        },
    }
    out = {"openapi": "3.0.3", "info": doc["info"], "paths": paths, "components": components}
    apply_known_deviations(out)
    return out


def apply_known_deviations(spec: dict[str, Any]) -> None:
    """The KNOWN_DEVIATIONS edits (the null-example rule is applied in convert_schema)."""
    state = spec["components"]["schemas"].get("WritableState")
    if state is not None:
        state["nullable"] = True
        state["enum"] = [*state["enum"], None]
    health = spec["paths"].get("/health_check", {}).get("get")
    if health is not None:
        ok = health["responses"]["200"]
        ok["content"] = {"text/plain": next(iter(ok["content"].values()))}


@functools.cache
def converted_document(flavour: str) -> OpenAPI:
    """The converted document, checked by openapi-spec-validator once per run."""
    return OpenAPI.from_dict(swagger2_to_openapi3(load_swagger(flavour)))


# --- checking exchanges -----------------------------------------------------------------------


def template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")


@dataclass
class Contract:
    """One vendor document, plus a record of which (method, template, status) were validated."""

    flavour: str
    openapi: OpenAPI
    documented: dict[str, set[str]]
    validated: set[tuple[str, str, int]] = field(default_factory=set)

    @classmethod
    def load(cls, flavour: str) -> Contract:
        swagger = load_swagger(flavour)
        documented = {path: {m.upper() for m in ops} for path, ops in swagger["paths"].items()}
        return cls(flavour, converted_document(flavour), documented)

    def template_for(self, method: str, path: str) -> str | None:
        """The documented template for a concrete path; literal templates win over ``{id}`` ones."""
        matches = [t for t, methods in self.documented.items() if method in methods and template_regex(t).match(path)]
        matches.sort(key=lambda t: t.count("{"))
        return matches[0] if matches else None

    def check(self, response: requests.Response) -> requests.Response:
        method = str(response.request.method)
        path = urlsplit(str(response.request.url)).path
        template = self.template_for(method, path)
        assert template is not None, f"{method} {path} is not in the {self.flavour} document"
        self.openapi.validate_response(RequestsOpenAPIRequest(response.request), RequestsOpenAPIResponse(response))
        self.validated.add((method, template, response.status_code))
        return response

    def covered_operations(self) -> set[tuple[str, str]]:
        return {(m, t) for m, t, status in self.validated if 200 <= status < 300}

    def documented_operations(self) -> set[tuple[str, str]]:
        return {(m, t) for t, methods in self.documented.items() for m in methods}


@dataclass
class Client:
    """A requests session whose every answer is checked against the contract."""

    sim: AvmSimulator
    contract: Contract
    session: requests.Session = field(default_factory=requests.Session)

    def __call__(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 10)
        response = self.contract.check(self.session.request(method, f"{self.sim.url}{path}", **kwargs))
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        ctype = response.headers.get("Content-Type", "")
        return response.json() if ctype.startswith("application/json") and response.content else response.text


@pytest.fixture
def contract2() -> Contract:
    return Contract.load("2.x")


@pytest.fixture
def contract4() -> Contract:
    return Contract.load("4.x")


@pytest.fixture
def clients() -> Iterator[Callable[[AvmSimulator, Contract], Client]]:
    made: list[Client] = []

    def make(sim: AvmSimulator, contract: Contract) -> Client:
        client = Client(sim, contract)
        made.append(client)
        return client

    yield make
    for client in made:
        client.session.close()


def assert_full_coverage(sim: AvmSimulator, contract: Contract) -> None:
    implemented = set(sim.routes())
    expected = implemented & contract.documented_operations()
    assert expected, "the simulator implements none of the documented operations"
    missing = expected - contract.covered_operations()
    assert not missing, f"documented operations served but not validated with a 2xx answer: {sorted(missing)}"
    statuses = {status for _, _, status in contract.validated}
    assert {200, 400, 403, 404} <= statuses, f"error answers were not all exercised: {sorted(statuses)}"


# --- the documents themselves ---------------------------------------------------------------------


def test_documents_are_present_and_unchanged() -> None:
    for flavour, name in SPEC_FILES.items():
        repo_copy = REPO_SPEC_DIR / name
        assert repo_copy.is_file(), f"{repo_copy} is missing: the suite needs the vendor documents"
        assert load_swagger(flavour)["swagger"] == "2.0"
        if (SHARED_SPEC_DIR / name).is_file():
            assert repo_copy.read_bytes() == (SHARED_SPEC_DIR / name).read_bytes(), f"{name} drifted"


def test_deviations_are_few_and_explained() -> None:
    assert len(KNOWN_DEVIATIONS) <= 3
    assert all(len(reason) > 40 for reason in KNOWN_DEVIATIONS.values())


# --- 2.x against the 2.17 document ------------------------------------------------------------------


def test_2x_responses_follow_the_2_17_document(
    start_avm: Callable[..., AvmSimulator], contract2: Contract, clients: Callable[[AvmSimulator, Contract], Client]
) -> None:
    sim = start_avm("2.x", storage_groups={"sg1": ["ds1", "ds2"]})
    programs = [{"name": "7-Zip", "publisher": "Igor Pavlov", "version": "23.01"}]
    app = sim.admin_create_volume("appstack", "Zipper", programs=programs, description="archiver")
    sim.admin_create_volume("appstack", "Bare", sidecar=False)
    writable = sim.admin_create_volume("writable", "jdoe", size_mb=32)
    attached = sim.admin_create_volume("writable", "asmith", size_mb=32)
    sim.admin_attach(attached.id, machine="DESKTOP-01")
    sim.admin_attach(app.id, machine="DESKTOP-01")
    sim.replicate_now()
    anonymous = clients(sim, contract2)
    call = clients(sim, contract2)

    anonymous("GET", "/cv_api/version", 200)
    anonymous("POST", "/cv_api/sessions", 400, json={"password": PASSWORD})
    anonymous("POST", "/cv_api/sessions", 400, json={"username": "admin", "password": "wrong"})
    anonymous("DELETE", "/cv_api/sessions", 200)
    for path in ("/cv_api/appstacks", f"/cv_api/appstacks/{app.id}", "/cv_api/writables", "/cv_api/operating_systems"):
        anonymous("GET", path, 403)
    anonymous("POST", "/cv_api/writables/grow", 403, json={"size_mb": 64, "volumes": [writable.id]})

    call("POST", "/cv_api/sessions", 200, json={"username": "admin", "password": PASSWORD})
    assert len(call("GET", "/cv_api/appstacks", 200)) == 2
    call("GET", "/cv_api/appstacks", 200, params={"operating_system_id": 1})
    call("GET", f"/cv_api/appstacks/{app.id}", 200)
    call("GET", "/cv_api/appstacks/9999", 404)
    entity = {"entity_type": "User", "path": "CN=jdoe,OU=Users,DC=lab,DC=example"}
    call("POST", "/cv_api/assignments", 200, json={"action_type": "assign", "id": app.id, "assignments": [entity]})
    again = call(
        "POST", "/cv_api/assignments", 200, json={"action_type": "assign", "id": app.id, "assignments": [entity]}
    )
    assert again["warnings"]  # a duplicate is ignored, with a warning
    call("POST", "/cv_api/assignments", 200, json={"action_type": "assign", "id": 9999, "assignments": [entity]})
    refused = {"entity_type": "User", "path": "CN=asmith,OU=Users,DC=lab,DC=example"}
    sim.admin_refuse_assignments(refused["path"])
    failed = call(
        "POST", "/cv_api/assignments", 500, json={"action_type": "assign", "id": app.id, "assignments": [refused]}
    )
    assert failed["errors"]
    call("POST", "/cv_api/assignments", 400, json={"action_type": "assign", "id": app.id, "assignments": []})
    assert len(call("GET", f"/cv_api/appstacks/{app.id}/assignments", 200)) == 1
    call("GET", "/cv_api/appstacks/9999/assignments", 404)
    call("GET", "/cv_api/operating_systems", 200)
    call("GET", "/cv_api/writables", 200)
    call("GET", "/cv_api/writables", 200, params={"min_capacity": "1", "count": "1"})
    call("GET", f"/cv_api/writables/{writable.id}", 200)
    call("GET", f"/cv_api/writables/{attached.id}", 200)
    call("GET", "/cv_api/writables/9999", 404)
    grow = {"size_mb": 64, "volumes": [writable.id, attached.id, 9999]}
    result = call("POST", "/cv_api/writables/grow", 200, json=grow)
    assert result["successes"] and result["warnings"] and result["errors"]
    call("POST", "/cv_api/writables/grow", 400, json={"volumes": [writable.id]})
    update = {"description": "d", "block_login": 0, "mount_prefix": "", "error_action": ""}
    call("PUT", f"/cv_api/writables/{writable.id}", 200, json=update)
    call("PUT", "/cv_api/writables/9999", 404, json=update)
    assert call("DELETE", f"/cv_api/writables/{attached.id}", 200)["snapvols"]["error"]
    assert call("DELETE", f"/cv_api/writables/{writable.id}", 200)["snapvols"]["success"]
    call("DELETE", "/cv_api/writables/9999", 200)
    unassign = {"action_type": "unassign", "id": app.id, "assignments": [entity]}
    sim.admin_refuse_unassignments(entity["path"], volume_id=app.id)
    kept = call("POST", "/cv_api/assignments", 500, json=unassign)
    assert kept["errors"] == ['Unable to remove assignment of "User <LAB\\jdoe>" from "Zipper"']
    sim.admin_refuse_unassignments(entity["path"], volume_id=app.id, refuse=False)
    call("POST", "/cv_api/assignments", 200, json=unassign)
    call("GET", "/cv_api/activity_logs", 200)
    call("GET", "/cv_api/activity_logs", 200, params={"admin_upn": "LAB\\admin"})
    call("DELETE", "/cv_api/sessions", 200)

    assert_full_coverage(sim, contract2)


def test_flat_version_shape_is_older_than_2_17(start_avm: Callable[..., AvmSimulator], contract2: Contract) -> None:
    """The flat ``/cv_api/version`` body (pre-2.17 managers) is not what 2.17 documents."""
    sim = start_avm("2.x", version_shape="flat")
    response = requests.get(f"{sim.url}/cv_api/version", timeout=10)
    assert isinstance(response.json()["version"], str)
    with pytest.raises(DataValidationError):
        contract2.check(response)


# --- 4.x against the 2512 document ---------------------------------------------------------------


def test_4x_responses_follow_the_2512_document(
    start_avm: Callable[..., AvmSimulator], contract4: Contract, clients: Callable[[AvmSimulator, Contract], Client]
) -> None:
    sim = start_avm("4.x", storage_groups={"sg1": ["ds1", "ds2"]})
    programs = [{"name": "Mozilla Firefox", "publisher": "Mozilla", "version": "121.0"}]
    pkg = sim.admin_create_volume("package", "Firefox 121", product="Firefox", programs=programs)
    sim.admin_create_volume("package", "Firefox 122", product="Firefox", current=False)
    sim.admin_create_volume("package", "Legacy Tool", sidecar=False, register=False)
    sim.import_folder_now("ds1", "appvolumes/packages")
    writable = sim.admin_create_volume("writable", "jdoe", size_mb=32)
    attached = sim.admin_create_volume("writable", "asmith", size_mb=32)
    sim.admin_set_busy(attached.id, "Backing Up")
    sim.admin_attach(attached.id)
    sim.admin_attach(pkg.id)
    sim.replicate_now()
    product_id = pkg.product_id
    anonymous = clients(sim, contract4)
    call = clients(sim, contract4)

    anonymous("GET", "/app_volumes/version", 200)
    anonymous("GET", "/health_check", 200)
    anonymous("POST", "/app_volumes/sessions", 400, json={"username": "", "password": ""})
    anonymous("DELETE", "/app_volumes/sessions", 200)
    for path in (
        "/app_volumes/app_products",
        f"/app_volumes/app_products/{product_id}",
        "/app_volumes/app_packages",
        f"/app_volumes/app_packages/{pkg.id}",
        f"/app_volumes/app_packages/{pkg.id}/programs",
        "/app_volumes/writables",
        "/app_volumes/lifecycle_stages",
    ):
        anonymous("GET", path, 403)
    anonymous("DELETE", "/app_volumes/app_assignments", 403, json={"ids": [1]})

    call("POST", "/app_volumes/sessions", 200, json={"username": "admin", "password": PASSWORD})
    products = call("GET", "/app_volumes/app_products", 200)["data"]
    assert {p["name"] for p in products} == {"Firefox", "Legacy Tool"}
    call("GET", f"/app_volumes/app_products/{product_id}", 200)
    call("GET", "/app_volumes/app_products/9999", 404)
    include = {"include": "app_markers,lifecycle_stage,app_product"}
    call("GET", f"/app_volumes/app_products/{product_id}/app_packages", 200, params=include)
    call("GET", "/app_volumes/app_products/9999/app_packages", 404)
    call("GET", "/app_volumes/app_packages", 200)
    call("GET", "/app_volumes/app_packages", 200, params=include)
    call("GET", f"/app_volumes/app_packages/{pkg.id}", 200, params=include)
    call("GET", "/app_volumes/app_packages/9999", 404)
    call("PUT", f"/app_volumes/app_packages/{pkg.id}", 200, json={"data": {"note": "n", "lifecycle_stage_id": 2}})
    call("PUT", f"/app_volumes/app_packages/{pkg.id}", 400, json={})
    call("PUT", "/app_volumes/app_packages/9999", 404, json={"data": {"note": "n"}})
    call("GET", f"/app_volumes/app_packages/{pkg.id}/programs", 200)
    call("GET", "/app_volumes/app_packages/9999/programs", 404)
    entity = {"path": "CN=Designers,OU=Groups,DC=lab,DC=example", "entity_type": "Group"}
    by_marker = {"app_product_id": product_id, "entities": [entity], "app_package_id": None, "app_marker_id": 1}
    jdoe = {"path": "CN=jdoe,OU=Users,DC=lab,DC=example", "entity_type": "User"}
    by_package = {
        **by_marker,
        "entities": [jdoe],
        "app_package_id": pkg.id,
        "app_marker_id": None,
        "filters": [{"value": "VDI"}],
    }
    created = call("POST", "/app_volumes/app_assignments", 200, json={"data": [by_marker, by_package]})["data"]
    call("POST", "/app_volumes/app_assignments", 400, json={"data": [{**by_marker, "app_product_id": 9999}]})
    duplicate = "Unable to create duplicate assignment with entity LAB\\jdoe to the same application"
    for again in (by_package, {**by_marker, "entities": [jdoe]}):  # the same target, or another of the application
        refusal = call("POST", "/app_volumes/app_assignments", 400, json={"data": [again]})
        assert refusal["errors"][0]["title"] == duplicate
    sim.admin_refuse_assignments("CN=asmith,OU=Users,DC=lab,DC=example")
    refused = {**by_package, "entities": [{"path": "CN=asmith,OU=Users,DC=lab,DC=example", "entity_type": "User"}]}
    call("POST", "/app_volumes/app_assignments", 400, json={"data": [refused]})
    call("GET", "/app_volumes/app_assignments", 200, params={"api_version": 4040})
    call("GET", "/app_volumes/app_assignments", 200, params={"api_version": 4040, "page[size]": 1, "page[number]": 2})
    call("GET", "/app_volumes/app_assignments", 400, params={"api_version": 4040, "page[number]": 0})
    call("GET", f"/app_volumes/app_products/{product_id}/assignments", 200, params={"include": "entities,filters"})
    call("GET", "/app_volumes/app_products/9999/assignments", 404, params={"include": "entities"})
    call("GET", f"/app_volumes/app_packages/{pkg.id}/assignments", 200, params={"include": "entities,filters"})
    call("GET", "/app_volumes/app_packages/9999/assignments", 404, params={"include": "entities"})
    sim.admin_refuse_unassignments(volume_id=pkg.id)  # the assignment pinned to it: nothing is deleted
    kept = call("DELETE", "/app_volumes/app_assignments", 500, json={"ids": [a["id"] for a in created]})
    assert kept["error"] == "Server Error" and kept["detail"] == f"Unable to delete assignment(s) {created[1]['id']}"
    sim.admin_refuse_unassignments(volume_id=pkg.id, refuse=False)
    call("DELETE", "/app_volumes/app_assignments", 200, json={"ids": [a["id"] for a in created] + [9999]})
    call("DELETE", "/app_volumes/app_assignments", 400, json={})
    call("GET", "/app_volumes/lifecycle_stages", 200)
    call("GET", "/app_volumes/writables", 200)
    call("GET", "/app_volumes/writables", 200, params={"attached": "true", "owner_type": "User"})
    call("GET", f"/app_volumes/writables/{writable.id}", 200)
    call("GET", f"/app_volumes/writables/{attached.id}", 200)
    call("GET", "/app_volumes/writables/9999", 404)
    grow = {"size_mb": 64, "volumes": [writable.id, attached.id, 9999]}
    call("POST", "/app_volumes/writables/grow", 200, json=grow)
    call("POST", "/app_volumes/writables/grow", 404, json={"size_mb": 64, "volumes": [9999]})
    call("POST", "/app_volumes/writables/grow", 400, json={"size_mb": 64})
    update = {"description": "d", "block_login": 1, "mount_prefix": "VDI", "error_action": ""}
    call("PUT", f"/app_volumes/writables/{writable.id}", 200, json=update)
    call("PUT", "/app_volumes/writables/9999", 404, json=update)
    assert call("DELETE", f"/app_volumes/writables/{attached.id}", 200)["snapvols"]["error"]
    assert call("DELETE", f"/app_volumes/writables/{writable.id}", 200)["snapvols"]["success"]
    call("DELETE", "/app_volumes/writables/9999", 404)
    call("GET", "/app_volumes/activity_logs", 200)
    call("GET", "/cv_api/license", 200)
    call("DELETE", "/app_volumes/sessions", 200)

    assert_full_coverage(sim, contract4)


# --- the toolkit's own client ------------------------------------------------------------------------


def checked_client(sim: AvmSimulator, flavour: str) -> tuple[AvmClient, Contract]:
    """An AvmClient whose every answer to a documented operation is validated against the flavour's document."""
    contract = Contract.load(flavour)
    client = AvmClient(sim.url, "admin", PASSWORD)

    def check(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        if contract.template_for(str(response.request.method), urlsplit(str(response.request.url)).path):
            contract.check(response)

    client.session.hooks["response"].append(check)
    return client, contract


@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_the_clients_assignment_round_trip_gets_documented_answers(
    start_avm: Callable[..., AvmSimulator], flavour: str
) -> None:
    """Record a volume's assignments, lose the volume, import it again and re-create them, all with AvmClient.

    Every answer to a documented operation is validated, whoever asked: the test's setup calls
    and the client's own (listing, package assignments with include=entities, assignment creation).
    """
    sim = start_avm(flavour)
    client, contract = checked_client(sim, flavour)
    client.login()  # the setup below posts with the client's session
    kind = "appstack" if flavour == "2.x" else "package"
    volume = sim.admin_create_volume(kind, "Editor 1", **({"product": "Editor"} if flavour == "4.x" else {}))
    group = {"entity_type": "Group", "path": "CN=Designers,OU=Groups,DC=lab,DC=example"}
    user = {"entity_type": "User", "path": "CN=jdoe,OU=Users,DC=lab,DC=example"}
    if flavour == "2.x":
        for entity, prefix in ((group, ""), (user, "VDI")):
            body = {"action_type": "assign", "id": volume.id, "assignments": [entity], "mount_prefix": prefix}
            client.session.post(f"{sim.url}/cv_api/assignments", json=body, timeout=10)
    else:
        by_marker = {"app_product_id": volume.product_id, "entities": [group], "app_package_id": None}
        by_package = {"app_product_id": volume.product_id, "entities": [user], "app_package_id": volume.id}
        items = [{**by_marker, "app_marker_id": 1}, {**by_package, "app_marker_id": None}]
        client.session.post(f"{sim.url}/app_volumes/app_assignments", json={"data": items}, timeout=10)
    [recorded] = [v.to_json() for v in client.inventory() if v.id == volume.id]
    assert len(recorded["assignments"]) == 2

    sim.admin_delete_volume(volume.id, keep_files=True)  # the manager forgot it; its files are still there
    client.import_folder("ds1", volume.file_locations[0].split("] ", 1)[1].rsplit("/", 1)[0])
    client.wait_jobs(10)
    [back] = [v for v in client.inventory() if v.name == "Editor 1"]
    outcomes = client.restore_assignments(back, recorded)
    assert [o.status for o in outcomes] == ["created", "created"], outcomes
    again = client.restore_assignments(back, recorded)
    assert [o.status for o in again] == ["present", "present"], again
    client.logout()
    created = ("POST", "/cv_api/assignments" if flavour == "2.x" else "/app_volumes/app_assignments")
    assert created in contract.covered_operations()
    if flavour == "4.x":
        assert ("GET", "/app_volumes/app_packages/{id}/assignments") in contract.covered_operations()
        assert ("GET", "/app_volumes/app_products/{id}/assignments") in contract.covered_operations()
    else:
        assert ("GET", "/cv_api/appstacks/{id}/assignments") in contract.covered_operations()


def editors(
    start_avm: Callable[..., AvmSimulator], flavour: str
) -> tuple[AvmSimulator, AvmClient, Contract, Volume, Volume]:
    """A manager with "Editor 1" and "Editor 1 restored" (not CURRENT on 4.x) and a logged-in checked client."""
    sim = start_avm(flavour)
    client, contract = checked_client(sim, flavour)
    client.login()
    kind = "appstack" if flavour == "2.x" else "package"
    product = {"product": "Editor"} if flavour == "4.x" else {}
    damaged = sim.admin_create_volume(kind, "Editor 1", **product)
    restored = sim.admin_create_volume(kind, "Editor 1 restored", **product, **({"current": False} if product else {}))
    return sim, client, contract, damaged, restored


@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_the_switch_gets_documented_answers(start_avm: Callable[..., AvmSimulator], flavour: str) -> None:
    """toolkit switch's calls (assign, unassign or delete, the marker) all get answers the documents describe."""
    sim, client, contract, damaged, restored = editors(start_avm, flavour)
    group = {"entity_type": "Group", "path": "CN=Designers,OU=Groups,DC=lab,DC=example"}
    user = {"entity_type": "User", "path": "CN=jdoe,OU=Users,DC=lab,DC=example"}
    if flavour == "2.x":
        body = {"action_type": "assign", "id": damaged.id, "assignments": [group, user], "mount_prefix": ""}
        client.session.post(f"{sim.url}/cv_api/assignments", json=body, timeout=10)
    else:
        by_marker = {"app_product_id": damaged.product_id, "entities": [group], "app_package_id": None}
        pinned = {"app_product_id": damaged.product_id, "entities": [user], "app_package_id": damaged.id}
        items = [{**by_marker, "app_marker_id": None}, {**pinned, "app_marker_id": None}]
        client.session.post(f"{sim.url}/app_volumes/app_assignments", json={"data": items}, timeout=10)

    report = switch(client, "lab", "Editor 1", "Editor 1 restored")
    assert report.ok, report.to_json()
    assert sorted(m.status for m in report.moves) == (["moved", "moved"] if flavour == "2.x" else ["kept", "moved"])
    assert not client.assignments(next(v for v in client.volumes() if v.id == damaged.id))
    assert len(client.assignments(next(v for v in client.volumes() if v.id == restored.id))) == 2
    client.logout()
    covered = contract.covered_operations()
    if flavour == "2.x":
        assert ("POST", "/cv_api/assignments") in covered
        assert ("GET", "/cv_api/appstacks/{id}/assignments") in covered
    else:
        assert ("DELETE", "/app_volumes/app_assignments") in covered
        assert ("POST", "/app_volumes/app_assignments") in covered
        assert ("GET", "/app_volumes/app_products/{id}/app_packages") in covered


@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_a_refused_removal_during_the_switch_gets_documented_answers(
    start_avm: Callable[..., AvmSimulator], flavour: str
) -> None:
    """The manager refuses to take the user's assignment off FROM: its error answer is the documented one."""
    sim, client, contract, damaged, _restored = editors(start_avm, flavour)
    user = {"entity_type": "User", "path": "CN=jdoe,OU=Users,DC=lab,DC=example"}
    if flavour == "2.x":
        body = {"action_type": "assign", "id": damaged.id, "assignments": [user], "mount_prefix": ""}
        client.session.post(f"{sim.url}/cv_api/assignments", json=body, timeout=10)
        fault: dict[str, Any] = {"distinguished_name": user["path"]}
        refusal = ("POST", "/cv_api/assignments", 500)
    else:
        pinned = {"app_product_id": damaged.product_id, "entities": [user], "app_package_id": damaged.id}
        client.session.post(f"{sim.url}/app_volumes/app_assignments", json={"data": [pinned]}, timeout=10)
        fault = {"volume_id": damaged.id}
        refusal = ("DELETE", "/app_volumes/app_assignments", 500)
    sim.admin_refuse_unassignments(**fault)
    report = switch(client, "lab", "Editor 1", "Editor 1 restored")
    assert not report.ok and [m.status for m in report.moves] == ["failed"], report.to_json()
    assert len(client.assignments(next(v for v in client.volumes() if v.id == damaged.id))) == 1
    assert refusal in contract.validated
    sim.admin_refuse_unassignments(**fault, refuse=False)
    assert switch(client, "lab", "Editor 1", "Editor 1 restored").ok
    client.logout()


# --- the validator can fail -----------------------------------------------------------------------


def _validate(contract: Contract, method: str, path: str, body: Any, status: int = 200) -> None:
    request = MockRequest("http://127.0.0.1", method, path)
    response = MockResponse(json.dumps(body).encode(), status_code=status)
    contract.openapi.validate_response(request, response)


def test_validator_rejects_wrong_shapes(
    avm2: AvmSimulator,
    avm4: AvmSimulator,
    contract2: Contract,
    contract4: Contract,
    avm_login: Callable[..., requests.Session],
) -> None:
    app = avm2.admin_create_volume("appstack", "Real")
    w2 = avm2.admin_create_volume("writable", "real2")
    w4 = avm4.admin_create_volume("writable", "real4")
    pkg = avm4.admin_create_volume("package", "Real 1", product="Real")
    s2 = avm_login(avm2)
    s4 = avm_login(avm4, namespace="app_volumes")
    listing = s2.get(f"{avm2.url}/cv_api/appstacks").json()
    detail = s2.get(f"{avm2.url}/cv_api/appstacks/{app.id}").json()
    writable2 = s2.get(f"{avm2.url}/cv_api/writables/{w2.id}").json()
    writable4 = s4.get(f"{avm4.url}/app_volumes/writables/{w4.id}").json()
    package = s4.get(f"{avm4.url}/app_volumes/app_packages/{pkg.id}").json()

    # the real answers pass …
    _validate(contract2, "GET", "/cv_api/appstacks", listing)
    _validate(contract2, "GET", f"/cv_api/appstacks/{app.id}", detail)
    _validate(contract2, "GET", f"/cv_api/writables/{w2.id}", writable2)
    _validate(contract4, "GET", f"/app_volumes/writables/{w4.id}", writable4)
    _validate(contract4, "GET", f"/app_volumes/app_packages/{pkg.id}", package)

    # … and each deliberately wrong variant fails
    wrong: list[tuple[Contract, str, Any]] = [
        (contract2, "/cv_api/appstacks", {"appstacks": listing}),  # wrapped instead of a bare array
        (contract2, "/cv_api/appstacks", [{**listing[0], "id": "one"}]),  # id as a string
        (contract2, f"/cv_api/appstacks/{app.id}", {"appstack": _without(detail["appstack"], "volume_guid")}),
        (contract2, f"/cv_api/writables/{w2.id}", {"writable": {**writable2["writable"], "attached": "Maybe"}}),
        (contract2, f"/cv_api/writables/{w2.id}", {"writable": {**writable2["writable"], "oses": []}}),
        (contract2, f"/cv_api/writables/{w2.id}", {"writable": {**writable2["writable"], "status": None}}),
        (contract4, f"/app_volumes/writables/{w4.id}", {"writable": {**writable4["writable"], "state": "Idle"}}),
        (contract4, f"/app_volumes/app_packages/{pkg.id}", {"data": {**package["data"], "size_mb": "8 MB"}}),
        (contract4, f"/app_volumes/app_packages/{pkg.id}", {"data": [package["data"]]}),
    ]
    for contract, path, body in wrong:
        with pytest.raises(DataValidationError):
            _validate(contract, "GET", path, body)
    with pytest.raises(ResponseNotFound):  # a status the document does not list
        _validate(contract4, "GET", f"/app_volumes/app_packages/{pkg.id}", package, status=418)


def _without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}
