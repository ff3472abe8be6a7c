import pytest
from openai import OpenAI

from tests.serve_process import ROOT, ServeProcess

DIRECT_URL = "http://127.0.0.1:8000"
PROXY_URL = "http://127.0.0.1:8001"
# The dev stack runs with API keys in the tests (from the environment, as in production).
API_KEY = "sk-e2e-test-key"
OTHER_KEY = "sk-e2e-second-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory):
    """The dev config served exactly as the README's first command does, once per test run."""
    log = tmp_path_factory.mktemp("serve") / "serve-dev.log"
    server = ServeProcess(
        ROOT / "configs" / "dev.yaml", f"{DIRECT_URL}/ready", log,
        env={"SERVING_API_KEYS": f"{API_KEY},{OTHER_KEY}"},
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["direct", "proxy"])
def base_url(request, dev_server):
    return {"direct": DIRECT_URL, "proxy": PROXY_URL}[request.param]


@pytest.fixture(scope="session")
def client(dev_server):
    return OpenAI(base_url=f"{DIRECT_URL}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def any_client(base_url):
    """The same tests through the direct ingress and through Serve's proxy path."""
    return OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
