import json

import pytest

from saeflow.core.errors import (
    InvalidPromptSet,
    PromptSetTooLarge,
    PromptTooLong,
    UnsupportedPromptFile,
)
from saeflow.core.promptset import (
    PromptLimits,
    iter_byte_lines,
    parse_options_document,
    parse_prompt_bytes,
    parse_prompt_lines,
    prompt_format,
)


def jsonl(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.mark.parametrize(
    ("key", "fmt"),
    [("prompts/a.jsonl", "jsonl"), ("prompts/a.txt", "txt"), ("prompts/x/a.json", "json")],
)
def test_prompt_format(key, fmt):
    assert prompt_format(key) == fmt


@pytest.mark.parametrize(
    "key", ["prompts/a.csv", "prompts/a.jsonl.gz", "prompts/a", "prompts/a.options.json"]
)
def test_unsupported_files(key):
    with pytest.raises(UnsupportedPromptFile) as info:
        prompt_format(key)
    assert key in info.value.message


def test_jsonl_with_options_line_ids_tags_and_blank_lines():
    data = (
        jsonl(
            {"saeflow": {"train": {"k": 16}}},
            {"prompt": "The capital of France is", "id": "paris", "tags": ["geo"]},
            {"prompt": "Second", "id": 7},
        )
        + b"\n"
        + jsonl("a bare string")
    )
    parsed = parse_prompt_bytes(data, "jsonl")
    assert parsed.options == {"train": {"k": 16}}
    assert parsed.options_line == 1
    assert [(p.index, p.id, p.text, p.tags, p.line) for p in parsed.prompts] == [
        (0, "paris", "The capital of France is", ("geo",), 2),
        (1, "7", "Second", (), 3),
        (2, "p3", "a bare string", (), 5),
    ]
    assert parsed.prompts[0].record("main") == {
        "prompt_index": 0,
        "id": "paris",
        "set": "main",
        "text": "The capital of France is",
    }


def test_txt_skips_blank_lines_and_keeps_line_numbers():
    parsed = parse_prompt_bytes("first\r\n\n  \nsecond ü\n".encode(), "txt")
    assert [(p.text, p.line, p.id) for p in parsed.prompts] == [
        ("first", 1, "p1"),
        ("second ü", 4, "p2"),
    ]
    assert parsed.options is None


def test_utf8_bom_is_ignored():
    parsed = parse_prompt_bytes(b"\xef\xbb\xbf" + jsonl({"prompt": "x"}), "jsonl")
    assert parsed.prompts[0].text == "x"


def test_json_document():
    doc = {"saeflow": {"top_k_features": 3}, "prompts": ["one", {"prompt": "two", "id": "b"}]}
    parsed = parse_prompt_bytes(json.dumps(doc, indent=2).encode(), "json")
    assert [p.text for p in parsed.prompts] == ["one", "two"]
    assert parsed.options == {"top_k_features": 3}


def error_of(data: bytes, fmt: str, limits: PromptLimits | None = None):
    with pytest.raises(Exception) as info:
        parse_prompt_bytes(data, fmt, limits)
    return info.value


@pytest.mark.parametrize(
    ("data", "fmt", "cls", "line", "needle"),
    [
        (jsonl({"prompt": "a"}) + b"{oops\n", "jsonl", InvalidPromptSet, 2, "invalid JSON"),
        (jsonl({"prompt": "a"}, {"text": "b"}), "jsonl", InvalidPromptSet, 2, "unknown key 'text'"),
        (jsonl({"prompt": "a"}, {"id": "b"}), "jsonl", InvalidPromptSet, 2, 'missing "prompt"'),
        (jsonl({"prompt": "a"}, {"prompt": 3}), "jsonl", InvalidPromptSet, 2, "must be a string"),
        (jsonl({"prompt": "a"}, {"prompt": "  "}), "jsonl", InvalidPromptSet, 2, "empty"),
        (jsonl({"prompt": "a"}, 5), "jsonl", InvalidPromptSet, 2, "expected"),
        (
            jsonl({"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}),
            "jsonl",
            InvalidPromptSet,
            2,
            "duplicate id",
        ),
        (jsonl({"prompt": "a", "id": ""}), "jsonl", InvalidPromptSet, 1, "id must be"),
        (jsonl({"prompt": "a", "tags": "t"}), "jsonl", InvalidPromptSet, 1, "tags"),
        (jsonl({"prompt": "a"}, {"saeflow": {}}), "jsonl", InvalidPromptSet, 2, "first line"),
        (jsonl({"saeflow": {}, "prompt": "a"}), "jsonl", InvalidPromptSet, 1, "first line"),
        (jsonl({"saeflow": 3}), "jsonl", InvalidPromptSet, 1, "object of run options"),
        (b"ok\nbad \xff byte\n", "txt", InvalidPromptSet, 2, "not UTF-8: byte 0xff at column 5"),
        (
            jsonl({"prompt": "a"}) + "é".encode("latin-1") + b"\n",
            "jsonl",
            InvalidPromptSet,
            2,
            "not UTF-8",
        ),
    ],
)
def test_errors_name_the_line(data, fmt, cls, line, needle):
    err = error_of(data, fmt)
    assert type(err) is cls
    assert err.line == line
    assert needle in err.message
    assert err.to_dict()["line"] == line


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "txt"),
        (b"\n\n  \n", "txt"),
        (b"", "jsonl"),
        (jsonl({"saeflow": {}}), "jsonl"),
        (b'{"prompts": []}', "json"),
    ],
)
def test_empty_set_is_rejected(data, fmt):
    err = error_of(data, fmt)
    assert type(err) is InvalidPromptSet
    assert "no prompts" in err.message


@pytest.mark.parametrize(
    ("data", "needle", "line"),
    [
        (b'{"prompts": [\n"a",\n', "invalid JSON", 2),
        (b'["a"]', '"prompts" array', None),
        (b'{"prompts": "a"}', "must be an array", None),
        (b'{"prompts": ["a"], "other": 1}', "unknown top-level key 'other'", None),
        (b'{"prompts": ["a", 3]}', "prompts[1]", None),
        (b'{"prompts": ["a"], "saeflow": []}', "object of run options", None),
        (b'{"prompts": [{"prompt": "a", "saeflow": {}}]}', "first line", None),
    ],
)
def test_json_document_errors(data, needle, line):
    err = error_of(data, "json")
    assert isinstance(err, InvalidPromptSet)
    assert needle in err.message
    assert err.line == line


def test_prompt_count_limit_names_the_first_line_over():
    data = b"".join(f"p{i}\n".encode() for i in range(6))
    err = error_of(data, "txt", PromptLimits(max_prompts=5))
    assert type(err) is PromptSetTooLarge
    assert err.line == 6
    assert "more than 5 prompts" in err.message
    assert len(parse_prompt_bytes(data[:-3], "txt", PromptLimits(max_prompts=5)).prompts) == 5


def test_file_size_limit_stops_reading():
    consumed = []

    def lines():
        for i in range(1_000_000):
            consumed.append(i)
            yield b"x" * 99

    with pytest.raises(PromptSetTooLarge) as info:
        parse_prompt_lines(lines(), "txt", PromptLimits(max_file_bytes=1000))
    assert info.value.line == 11
    assert len(consumed) == 11  # rejected without reading the rest
    assert isinstance(info.value, InvalidPromptSet)


def test_file_size_limit_counts_exactly():
    data = b"a" * 9 + b"\n" + b"b" * 9  # 19 bytes
    assert len(parse_prompt_bytes(data, "txt", PromptLimits(max_file_bytes=19)).prompts) == 2
    assert type(error_of(data, "txt", PromptLimits(max_file_bytes=18))) is PromptSetTooLarge


def test_prompt_length_is_bounded_in_bytes():
    limits = PromptLimits(max_prompt_tokens=2)  # 64 bytes
    assert limits.max_prompt_bytes == 64
    ok = "é" * 32  # 64 bytes
    assert parse_prompt_bytes(jsonl({"prompt": ok}), "jsonl", limits).prompts[0].text == ok
    err = error_of(jsonl({"prompt": "a"}, {"prompt": ok + "x"}), "jsonl", limits)
    assert type(err) is PromptTooLong
    assert err.line == 2
    assert "65 bytes" in err.message


def test_default_limits():
    limits = PromptLimits()
    assert (limits.max_prompts, limits.max_file_bytes, limits.max_prompt_tokens) == (
        10_000,
        50 * 1024 * 1024,
        512,
    )
    assert limits.max_prompt_bytes == 512 * 32


def test_iter_byte_lines_matches_store_semantics():
    assert list(iter_byte_lines(b"a\r\nb\n\nc\n")) == [b"a", b"b", b"", b"c"]
    assert list(iter_byte_lines(b"a")) == [b"a"]
    assert list(iter_byte_lines(b"")) == []


def test_options_document():
    assert parse_options_document(b'{"train": {"k": 4}}', "s") == {"train": {"k": 4}}
    assert parse_options_document(b'{"saeflow": {"top_k_features": 2}}', "s") == {
        "top_k_features": 2
    }
    with pytest.raises(InvalidPromptSet) as info:
        parse_options_document(b'{\n"a": }', "prompts/x.options.json")
    assert info.value.line == 2
    with pytest.raises(InvalidPromptSet):
        parse_options_document(b"[1]", "s")
    with pytest.raises(InvalidPromptSet):
        parse_options_document(b"\xff", "s")
