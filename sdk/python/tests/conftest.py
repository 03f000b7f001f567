"""The world the SDK tests run in: a real broker and endpoint, started by the Rust test
`cli/tests/python_sdk.rs`, which passes them in FXR_BROKER, FXR_TOKEN and FXR_ENDPOINT."""

import os

import pytest

from fxr import Client, Executor


@pytest.fixture(scope="session")
def endpoint() -> str:
    ep = os.environ.get("FXR_ENDPOINT")
    if not ep:
        pytest.skip("FXR_ENDPOINT is not set: run through `cargo test --test python_sdk`")
    return ep


@pytest.fixture(scope="session")
def client(endpoint) -> Client:
    return Client()


@pytest.fixture()
def executor(client, endpoint):
    with Executor(endpoint=endpoint, client=client, batch_size=256) as ex:
        yield ex
