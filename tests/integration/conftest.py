import pytest

SECRET = "s3cret"


@pytest.fixture(params=["hypercorn", "uvicorn", "native"])
def http_server(request):
    """Every integration test that asks for this runs on both HTTP server plugins."""
    return request.param
