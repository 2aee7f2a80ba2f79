"""Reading prompt files in bounded memory: lines, UTF-8, the .json document, duplicate ids."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator

import pytest

from saeflow.core.errors import InvalidPromptSet, PromptSetTooLarge
from saeflow.core.idset import IdHashSet
from saeflow.core.promptset import PromptLimits, PromptReader, parse_prompt_bytes
from saeflow.core.text_stream import JsonPromptDocument, bounded_lines, decoded_chunks


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [1, 3, 1 << 20])
def test_lines_are_the_same_whatever_the_chunk_size(size):
    data = b"a\r\nbb\n\nccc\n" + "é".encode() + b"\n"
    lines = list(bounded_lines(pieces(data, size), max_line_bytes=100, max_file_bytes=100))
    assert lines == [(1, b"a"), (2, b"bb"), (3, b""), (4, b"ccc"), (5, "é".encode())]


def test_a_line_over_the_limit_is_refused_before_the_rest_is_read():
    read = []

    def endless() -> Iterator[bytes]:
        for i in range(10_000):
            read.append(i)
            yield b"x" * 1000  # one line that never ends

    with pytest.raises(InvalidPromptSet, match="longer than 5000 bytes") as info:
        list(bounded_lines(endless(), max_line_bytes=5000, max_file_bytes=10**9))
    assert info.value.line == 1 and len(read) <= 6


def test_the_file_size_limit_counts_every_byte():
    with pytest.raises(PromptSetTooLarge):
        list(bounded_lines(pieces(b"ab\n" * 10, 4), max_line_bytes=10, max_file_bytes=29))
    lines = list(bounded_lines(pieces(b"ab\n" * 10, 4), max_line_bytes=10, max_file_bytes=30))
    assert len(lines) == 10


def test_utf8_split_across_chunks_decodes_and_a_bad_byte_names_its_line():
    text = "première\nligne ü 😀\n"
    assert "".join(decoded_chunks(pieces(text.encode(), 1), max_file_bytes=100)) == text
    bad = b"ok\nstill ok\nbad \xff\n"
    with pytest.raises(InvalidPromptSet, match="0xff") as info:
        "".join(decoded_chunks(pieces(bad, 5), max_file_bytes=100))
    assert info.value.line == 3


DOCUMENT = {
    "prompts": ["one", {"prompt": "two \u2028 \\", "id": 7, "tags": ["a"]}, "three 3.5"],
    "saeflow": {"top_k_features": 3, "train": {"lr": 1e-3}},
}


@pytest.mark.parametrize("size", [1, 2, 7, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_the_json_document_streams_value_by_value(size, indent):
    text = json.dumps(DOCUMENT, indent=indent)
    chunks = (text[i : i + size] for i in range(0, len(text), size))
    events = [
        (kind, value, index)
        for kind, value, index, _ in JsonPromptDocument(chunks, max_value_chars=1000)
    ]
    assert events == [
        ("prompt", "one", 0),
        ("prompt", DOCUMENT["prompts"][1], 1),
        ("prompt", "three 3.5", 2),
        ("options", DOCUMENT["saeflow"], None),
    ]


def test_a_number_cut_by_a_chunk_edge_is_read_whole():
    text = '{"saeflow": 12345, "prompts": ["a"]}'
    for size in range(1, len(text)):
        chunks = (text[i : i + size] for i in range(0, len(text), size))
        events = list(JsonPromptDocument(chunks, max_value_chars=100))
        assert events[0][:2] == ("options", 12345), size


def test_a_json_value_over_the_limit_is_refused_before_the_rest_is_read():
    read = []

    def chunks() -> Iterator[str]:
        yield '{"prompts": ["'
        for i in range(10_000):
            read.append(i)
            yield "x" * 100

    with pytest.raises(InvalidPromptSet, match="longer than 1000"):
        list(JsonPromptDocument(chunks(), max_value_chars=1000))
    assert len(read) < 20


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"prompts": ["a" "b"]}', "expected ',' or ']'"),
        ('{"prompts": ["a"]} x', "extra data"),
        ('{"prompts": ["a"], 3: 1}', "keys must be strings"),
        ('{"prompts": ["a", }', "Expecting value"),
    ],
)
def test_json_syntax_errors_are_invalid_prompt_sets(text, needle):
    with pytest.raises(InvalidPromptSet, match=needle):
        parse_prompt_bytes(text.encode(), "json")


def test_ids_are_kept_as_hashes_and_duplicates_found():
    ids = IdHashSet(capacity=4)
    assert all(ids.add(f"id-{i}") for i in range(10_000))
    assert not ids.add("id-1234") and not ids.add("id-0")
    assert len(ids) == 10_000
    assert ids.nbytes <= 32 * 10_000  # a table at most half full: 8-16 bytes an id (x2 slack)


def generated_jsonl(n: int) -> Iterator[bytes]:
    """A file of ``n`` prompts produced on the fly (never held whole)."""
    yield b'{"saeflow": {"top_k_features": 4}}\n'
    for start in range(0, n, 1000):
        yield b"".join(
            json.dumps({"prompt": f"prompt number {i} " * 3, "id": f"id{i}"}).encode() + b"\n"
            for i in range(start, min(n, start + 1000))
        )


def peak_bytes(n: int) -> int:
    limits = PromptLimits(max_prompts=10**7, max_file_bytes=10**10)
    tracemalloc.start()
    try:
        reader = PromptReader(generated_jsonl(n), "jsonl", limits)
        count = sum(1 for _ in reader)
        assert count == n and reader.options == {"top_k_features": 4}
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file_beyond_the_id_hashes():
    small, large = peak_bytes(2_000), peak_bytes(60_000)
    # 58k more prompts (~4 MB of JSON) cost only their id hashes (8-24 bytes each).
    assert large - small < 58_000 * 32, (small, large)
