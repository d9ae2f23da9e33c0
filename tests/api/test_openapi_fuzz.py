"""The API against its own OpenAPI document: schemathesis on a real server, with a real token.

Every operation is called with generated requests, valid and invalid, stateless and then in
sequences that follow the document's links (a created session's id into every session route).
What must hold: no 5xx, and every answer (status, content type, body) is one the document
declares, errors included. Valid requests that the domain refuses (an empty message, a model an
organization's budget does not allow) are not failures: the schema cannot say everything.
Bounded to run in about a minute on SQLite.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from parley.app import create_app
from parley.config import load_settings
from tests.api.conftest import API, Shared, assert_error, create_session
from tests.conftest import DatabaseUrls, base_env

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def shared_database(tmp_path_factory: pytest.TempPathFactory) -> DatabaseUrls:
    """The document is the same on either database: SQLite keeps the run short."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'parley.db'}"
    return DatabaseUrls("sqlite", url, url)


# How invalid requests may be refused: schemathesis's list, plus 408 and 413 (a message over the
# limit is 413, as the document says).
REJECTIONS = ["400", "401", "403", "404", "405", "406", "408", "409", "413", "415", "422", "428", "429", "5xx"]
# The one 5xx by design: decisions and plans answer 501 NOT_SUPPORTED_ON_PROVIDER without a tool
# server (the reference API's code, which its clients branch on).
NOT_SERVER_ERRORS = ["2xx", "3xx", "4xx", "501"]


@pytest.fixture(scope="module")
def api_schema(shared: Shared) -> OpenApiSchema:
    config = SchemathesisConfig.from_dict(
        {
            "checks": {
                "negative_data_rejection": {"expected-statuses": REJECTIONS},
                "not_a_server_error": {"expected-statuses": NOT_SERVER_ERRORS},
            }
        }
    )
    return schemathesis.openapi.from_url(f"{shared.server.url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def auth(shared: Shared) -> dict[str, str]:
    return {"Authorization": f"Bearer {shared.tenants.a1}"}


def _operations() -> list[str]:
    """`METHOD path` of every documented operation, from an app built as the server is (the
    document needs no running server); each is a test of its own."""
    settings = load_settings(base_env(Path(tempfile.gettempdir()) / "parley-fuzz-unused"))
    document = create_app(settings).openapi()
    return [f"{method.upper()} {path}" for path, operations in document["paths"].items() for method in operations]


_turns = itertools.count()


@pytest.mark.parametrize("operation", _operations())
def test_every_operation_answers_as_documented(
    api_schema: OpenApiSchema, shared: Shared, auth: dict[str, str], operation: str
) -> None:
    method, path = operation.split(" ", 1)

    @FUZZ
    @given(case=api_schema[path][method].as_strategy())
    def answers_as_documented(case: Any) -> None:
        if "session_id" in case.path_parameters and next(_turns) % 2:
            # Half the calls on a real session of the caller's, so they reach past the 404.
            with shared.client(shared.tenants.a1) as c:
                case.path_parameters["session_id"] = create_session(c)
        case.call_and_validate(base_url=shared.server.url, headers=auth, checks=CHECKS, timeout=20)

    answers_as_documented()


def test_sequences_that_follow_the_links_answer_as_documented(
    api_schema: OpenApiSchema, shared: Shared, auth: dict[str, str]
) -> None:
    base_url = shared.server.url
    reached: list[int] = []  # statuses of calls on a session the sequence created

    class Sequences(api_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base_url, "headers": auth, "timeout": 20}

        def after_call(self, response: Any, case: Any) -> None:
            if "{session_id}" in case.operation.path and response.status_code != 404:
                reached.append(response.status_code)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            # Sequences are about valid flows: what invalid requests get is the stateless test's.
            case.validate_response(response, checks=[c for c in CHECKS if c is not negative_data_rejection])

    Sequences.run(settings=settings(FUZZ, max_examples=25, stateful_step_count=6))
    assert reached, "no sequence followed a link from POST /sessions to a session it created"


def test_the_document_declares_the_envelope_for_every_error(shared: Shared) -> None:
    with shared.client(None) as c:
        document = c.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            errors = {status: r for status, r in operation["responses"].items() if int(status) >= 400}
            assert "500" in errors, (method, path)
            if path.startswith(API):
                assert {"401", "503"} <= set(errors), (method, path)
                assert operation["security"] == [{"bearer": []}], (method, path)
            for status, response in errors.items():
                assert response["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                }, (method, path, status)


def test_a_wrong_method_names_every_method_of_the_path_in_allow(shared: Shared) -> None:
    with shared.client(shared.tenants.a1) as c:
        r = c.request("OPTIONS", f"{API}/sessions")
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "GET, POST"
        r = c.put(f"{API}/sessions/{create_session(c)}")
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "DELETE, GET, PATCH"
