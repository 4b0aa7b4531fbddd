import pytest

from .redis_fixture import redis_prefix, redis_server  # noqa: F401  (a real redis-server, for the scale-out tests)

SECRET = "s3cret"


@pytest.fixture(params=["hypercorn", "uvicorn", "native"])
def http_server(request):
    """Every integration test that asks for this runs on both HTTP server plugins."""
    return request.param
