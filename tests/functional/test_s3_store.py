import io

import pytest

from saeflow.adapters.s3_store import S3Store
from saeflow.core.errors import ObjectNotFound
from saeflow.ports import ObjectStore


def test_is_an_object_store(store):
    assert isinstance(store, ObjectStore)
    assert store.uri("a/b") == "s3://saeflow-test/a/b"


def test_bytes_and_json_round_trip(store):
    store.put_bytes("k/raw", b"\x00\x01")
    assert store.get_bytes("k/raw") == b"\x00\x01"
    store.put_json("k/doc.json", {"text": "ü", "n": [1, 2]})
    assert store.get_json("k/doc.json") == {"text": "ü", "n": [1, 2]}
    assert "ü".encode() in store.get_bytes("k/doc.json")  # not \u-escaped
    head = store.client.head_object(Bucket=store.bucket, Key="k/doc.json")
    assert head["ContentType"] == "application/json"


def test_missing_keys(store):
    assert store.exists("nope") is False
    for call in (store.get_bytes, store.get_json, store.open_stream):
        with pytest.raises(ObjectNotFound):
            call("nope")
    with pytest.raises(ObjectNotFound):
        list(store.iter_lines("nope"))
    with pytest.raises(ObjectNotFound):
        store.copy("nope", "dest")


def test_iter_lines_splits_on_newline_only(store, monkeypatch):
    monkeypatch.setattr("saeflow.adapters.s3_store._CHUNK_BYTES", 3)  # lines span chunks
    store.put_bytes("l.txt", b"first\r\nsec\rond\n\nlast-no-newline")
    assert list(store.iter_lines("l.txt")) == [b"first", b"sec\rond", b"", b"last-no-newline"]
    store.put_bytes("t.txt", b"a\nb\n")
    assert list(store.iter_lines("t.txt")) == [b"a", b"b"]
    store.put_bytes("e.txt", b"")
    assert list(store.iter_lines("e.txt")) == []


def test_streams_and_listing(store):
    store.upload_stream("s/one", io.BytesIO(b"1" * 10_000), "text/plain")
    stream = store.open_stream("s/one")
    try:
        assert stream.read(3) == b"111"
        assert len(stream.read()) == 9_997
    finally:
        stream.close()
    store.copy("s/one", "s/two")
    store.put_bytes("t/three", b"3")
    assert list(store.list_keys("s/")) == ["s/one", "s/two"]
    assert store.exists("s/two")


def test_list_keys_paginates(store, monkeypatch):
    monkeypatch.setattr("saeflow.adapters.s3_store._LIST_PAGE_SIZE", 2)
    for i in range(5):
        store.put_bytes(f"many/{i:05d}", b"")
    calls = []
    store.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    keys = list(store.list_keys("many/"))
    assert keys == [f"many/{i:05d}" for i in range(5)]
    assert len(calls) == 3  # three pages of at most two keys


def test_for_bucket_shares_the_client(store, s3_client):
    s3_client.create_bucket(Bucket="other-bucket")
    other = store.for_bucket("other-bucket")
    assert isinstance(other, S3Store)
    other.put_bytes("x", b"y")
    assert other.uri("x") == "s3://other-bucket/x"
    assert not store.exists("x")


def test_iter_lines_of_one_version(store):
    first = store.client.put_object(Bucket=store.bucket, Key="v.txt", Body=b"old\n")["VersionId"]
    store.put_bytes("v.txt", b"new\n")
    assert list(store.iter_lines("v.txt")) == [b"new"]
    assert list(store.iter_lines("v.txt", first)) == [b"old"]
