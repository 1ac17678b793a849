"""/openapi.json describes every HTTP route as a valid OpenAPI 3.1 document, its examples are
bodies the service accepts, and deploy/postman_collection.json was generated from it."""

from __future__ import annotations

import json

import httpx
import msgspec
from openapi_spec_validator import validate
from starlette.routing import Route

from service.app import create_app
from service.openapi import OPERATIONS, openapi_document, postman_collection
from service.settings import Settings
from tests.support import REPO


def test_the_served_document_is_valid_openapi_3_1(api_server):
    document = httpx.get(f"{api_server.url}/openapi.json", timeout=10).json()

    validate(document)

    assert document["openapi"] == "3.1.0"


def test_every_http_route_of_the_app_is_described():
    app = create_app(Settings())
    routes = {
        (method, route.path.replace(":path}", "}"))
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods - {"HEAD"}
    }
    described = {(operation.method, operation.path) for operation in OPERATIONS}

    assert routes == described


def test_every_example_is_a_body_the_service_accepts():
    for operation in OPERATIONS:
        if operation.example is not None:
            msgspec.json.decode(msgspec.json.encode(operation.example), type=operation.request)


def test_the_postman_collection_is_generated_from_the_document():
    committed = json.loads((REPO / "deploy" / "postman_collection.json").read_text())
    requests = {item["name"] for item in committed["item"]}

    assert committed == json.loads(msgspec.json.encode(postman_collection(openapi_document())))
    assert requests == {f"{operation.method} {operation.path}" for operation in OPERATIONS}
