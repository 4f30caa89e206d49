"""Promise 6: schemathesis against the OpenAPI schema of the live app (a real uvicorn process on PostgreSQL),
authenticated as a fresh tenant: no 5xx and no response that violates the schema, for every operation.
Bounded here (GKD_SCHEMA_EXAMPLES, default 25 per operation); tests/chaos/fuzz_api.py runs a larger budget.

The data parsers have their own property tests in tests/data/test_data.py (random bytes, near-valid text, wrong
encodings, NUL bytes, huge fields, mixed int/str labels, round trips), so nothing is added for them here.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.service import new_key

pytestmark = [pytest.mark.slow, pytest.mark.services]

EXAMPLES = int(os.environ.get("GKD_SCHEMA_EXAMPLES", "25"))


def fuzz(base_url: str, key: str, examples: int) -> tuple[int, dict[str, str]]:
    """Run every operation of the live schema; returns (operations, {operation: first failure})."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    failures: dict[str, str] = {}
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        count += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            # positive_data_acceptance is left out: a schema-valid body can still be a bad CSV or name ids
            # that do not exist, and a 4xx envelope (documented) is then the right answer.
            case.call_and_validate(headers=headers, timeout=20, excluded_checks=[positive_data_acceptance])

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect every failure, report all
            failures[operation.label] = str(exc)[:2000]
    return count, failures


def test_api_conforms_to_its_schema(live_server) -> None:  # type: ignore[no-untyped-def]
    from tests.reliability.conftest import report

    operations, failures = fuzz(live_server.url, new_key(live_server.settings), EXAMPLES)
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    report(f"promise 6: schemathesis {EXAMPLES} examples x {operations} operations: 0 failures")
