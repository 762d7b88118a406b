"""Fixtures of the data-path tests: a moto S3 server on 127.0.0.1 and stores."""
import logging
import os

import dp_helpers
import pytest

from workers.stores import make_store


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's threaded server on a free loopback port, for the whole session."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(k, "testing")
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    yield f"http://127.0.0.1:{port}"
    server.stop()


STORE_KINDS = ["posix", "s3", "memory"]


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    """A fresh, empty store of each kind."""
    if request.param == "posix":
        return make_store("posix", path=str(tmp_path / "store"))
    if request.param == "memory":
        return make_store("memory")
    return dp_helpers.new_s3_store(request.getfixturevalue("moto_endpoint"))


@pytest.fixture(params=STORE_KINDS)
def store_factory(request, tmp_path):
    """Callable returning a fresh empty store of one kind (for hypothesis examples)."""
    counter = iter(range(10 ** 6))
    if request.param == "posix":
        return lambda: make_store("posix", path=str(tmp_path / f"store{next(counter)}"))
    if request.param == "memory":
        return lambda: make_store("memory")
    endpoint = request.getfixturevalue("moto_endpoint")
    return lambda: dp_helpers.new_s3_store(endpoint)


@pytest.fixture
def posix_store(tmp_path):
    return make_store("posix", path=str(tmp_path / "store"))
