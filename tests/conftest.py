"""Fixtures shared by every test folder."""


import urllib.request

import fsspec
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A moto S3 server on a free loopback port, with a bucket ``replay-bucket``; s3fs is pointed at it.

    s3fs gets the endpoint from fsspec's config (``conf['s3']['client_kwargs']``), which every
    ``s3://`` URL opened through fsspec honours.
    """
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    import s3fs

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto keeps its buckets in process-wide state: start every test from an empty server.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="replay-bucket")
        monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": endpoint}})
        monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", endpoint)  # what spawned workers read at import
        s3fs.S3FileSystem.clear_instance_cache()
        yield client
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
