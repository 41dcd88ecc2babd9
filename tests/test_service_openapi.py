"""The OpenAPI document stays true: it documents exactly the app's routes and methods, its
schemas are valid JSON Schema, and (in test_service_api.py) every response the contract
tests get validates against it."""
import re

import jsonschema
import pytest

from service.app import create_app
from service.errors import CODES, HTTP_CODES
from service_helpers import openapi_document

IMPLICIT = {"HEAD", "OPTIONS"}  # Flask adds these to every GET route / every route


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # No model needed to inspect the routes.
    return create_app({"MODEL_URI": str(tmp_path_factory.mktemp("empty")), "START_LOADER": False})


def flask_routes(app):
    routes = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods - IMPLICIT)
    return routes


def test_every_route_is_documented_and_every_documented_path_is_a_route(app):
    documented = {path: set(ops) for path, ops in openapi_document()["paths"].items()}
    assert flask_routes(app) == documented


def test_component_schemas_are_valid_json_schema():
    for name, schema in openapi_document()["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_operation_documents_its_responses():
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            assert "200" in op["responses"], (method, path)
            assert "405" in op["responses"], f"{method} {path}: a wrong method is a documented 405"
            for status, response in op["responses"].items():
                assert response.get("description"), (method, path, status)
                if status != "200" and int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error"


def test_every_ref_resolves():
    doc = openapi_document()
    refs = re.findall(r"'\$ref': '#/components/schemas/(\w+)'", str(doc))
    assert refs and set(refs) <= set(doc["components"]["schemas"])


def test_error_codes_in_the_code_are_documented():
    """The Error schema's enum is exactly the service's list of codes, which every error
    it sends comes from (ApiError takes only those; Werkzeug's errors map into it)."""
    enum = openapi_document()["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert enum == list(CODES)
    assert set(HTTP_CODES.values()) <= set(CODES)
    assert all(CODES[code] == status for status, code in HTTP_CODES.items())
