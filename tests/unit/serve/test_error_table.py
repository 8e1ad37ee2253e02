"""One error table: HTTP status and type live on the error classes; the serve modules import no cycle."""

import subprocess
import sys

import pytest

from cns_ray import errors as E
from cns_ray.serve.results import Failed


@pytest.mark.parametrize(
    "exc,status,etype",
    [
        (E.InvalidNameError("x"), 422, "invalid_name"),
        (E.NotFoundError("x"), 404, "not_found"),
        (E.CommitConflictError("x"), 409, "conflict"),
        (E.CorruptStateError("x"), 503, "tenant_unavailable"),
        (E.TenantUnavailableError("acme", "corrupt"), 503, "tenant_unavailable"),
        (E.InputError("x"), 422, "invalid_request"),
        (E.RequestTooLargeError("x"), 413, "request_too_large"),
        (E.TooManyRequestsError("x"), 429, "rate_limited"),
        (E.ServiceUnavailableError("x"), 503, "service_unavailable"),
        (E.RequestCancelledError("x"), 499, "cancelled"),
        (E.AuthError("x"), 401, "authentication_error"),
        (E.AuthError("x", 403), 403, "permission_denied"),
        (E.ApiError(408, "request_timeout", "x"), 408, "request_timeout"),
        (RuntimeError("boom"), 500, "generation_failed"),
    ],
)
def test_failures_take_status_and_type_from_the_class(exc, status, etype):
    f = Failed.of(exc)
    assert (f.status, f.type) == (status, etype)
    err = f.error()
    assert (err.http_status, err.error_type) == (status, etype)


def test_retry_after_travels_with_the_failure():
    f = Failed.of(E.ServiceUnavailableError("replica restarting"))
    assert f.retry_after_s == 5 and f.error().retry_after_s == 5


def test_learn_route_does_not_import_the_ingress():
    code = "import sys, cns_ray.serve.learn_route; assert 'cns_ray.serve.ingress' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
