"""runweb.batch_request: the POST /batch/new body, rule by rule (pure; no HTTP)."""
from pathlib import Path

import pytest

from simx import protocol
from runweb import batch_request
from runweb.batch_request import parse
from runweb.errors import InvalidRequest

EXAMPLE = Path(__file__).resolve().parent.parent / "runweb" / "example" / "batch-req.yaml"
BASE = "engine: dummy\nn_runs: 3\n"


def test_fields_are_exactly_those_of_start_batch():
    who = ("actor", "admin")  # set by runweb from the caller, never from the body
    assert list(batch_request.FIELDS) == [f for f in protocol.SCHEMA["StartBatch"] if f not in who]
    required = set(protocol.SCHEMA["StartBatch"]) - protocol.OPTIONAL["StartBatch"]
    assert set(batch_request.REQUIRED) == required


def test_the_original_readme_example_is_accepted_as_is():
    text = EXAMPLE.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "name:           test123"
    assert parse(EXAMPLE.read_bytes()) == {
        "name": "test123", "group": "topl", "user": "topl", "engine": "dummy", "n_runs": 3,
        "param": {"step_count": 5, "step_delay": 1},
    }
    protocol.message("StartBatch", **parse(EXAMPLE.read_bytes()))


@pytest.mark.parametrize("extra, expected", [
    ("", {}),
    ("name: 42\ngroup: 7\nuser: 0\n", {"name": "42", "group": "7", "user": "0"}),
    ("name: null\ngroup: ~\nuser:\n", {"name": "", "group": "", "user": ""}),
    ("name: テスト 試験\nuser: Zoë\ngroup: группа\n", {"name": "テスト 試験", "user": "Zoë", "group": "группа"}),
    ("param: null\n", {"param": {}}),
    ("param: {}\n", {"param": {}}),
    ("param: {名前: 値, nested: {list: [1, 2.5, null, true, text]}}\n",
     {"param": {"名前": "値", "nested": {"list": [1, 2.5, None, True, "text"]}}}),
    ("param: {a: &x [1, 2], b: *x}\n", {"param": {"a": [1, 2], "b": [1, 2]}}),
    ("param: {base: &b {x: 1}, more: {<<: *b, y: 2}}\n", {"param": {"base": {"x": 1}, "more": {"x": 1, "y": 2}}}),
    ("max_attempts: 1\nmax_requeues: 0\n", {"max_attempts": 1, "max_requeues": 0}),
    ("max_attempts: null\nmax_requeues: null\nidempotency_key: null\n", {}),
    ("time_limit: 2.5\n", {"time_limit": 2.5}),
    ("time_limit: 60\n", {"time_limit": 60}),
    ("time_limit: null\n", {"time_limit": None}),
    ("idempotency_key: " + "k" * 200 + "\n", {"idempotency_key": "k" * 200}),
    ("n_runs: 100000000\n", {"n_runs": 100000000}),
    # plain decimal numbers keep their YAML meaning; quoted non-decimal forms are strings
    ("param: {a: -7, b: +3, c: 0, d: 1.5, e: 2.5e3, f: -.5}\n",
     {"param": {"a": -7, "b": 3, "c": 0, "d": 1.5, "e": 2500.0, "f": -0.5}}),
    ("param: {a: '0x10', b: \"1:30\"}\nname: 1_000\n", {"param": {"a": "0x10", "b": "1:30"}, "name": "1_000"}),
    ("name: Zoë 田中\n", {"name": "Zoë 田中"}),
])
def test_valid_requests(extra, expected):
    body = BASE.replace("n_runs: 3\n", "") if "n_runs" in extra else BASE
    fields = parse((body + extra).encode("utf-8"))
    assert fields == {"engine": "dummy", "n_runs": 3, **expected}
    protocol.message("StartBatch", **fields)  # runq would accept it


@pytest.mark.parametrize("body, message", [
    # the body itself
    (b"", "the request body is empty"),
    (b"\xff\xfe" + BASE.encode(), "malformed YAML: not UTF-8 (byte 0xff at offset 0)"),
    (b"engine: [dummy\nn_runs: 3\n", "malformed YAML: line 2, column 7: while parsing a flow sequence, did not find expected ',' or ']'"),
    (b"engine: dummy\n  n_runs: 3\n", "malformed YAML: line 2, column 9: mapping values are not allowed in this context"),
    (b"engine: dummy\nengine: other\nn_runs: 3\n", "malformed YAML: line 2, column 1: key 'engine' is given twice"),
    (b"a: 1\n---\nb: 2\n", "malformed YAML: line 2, column 1: expected a single document in the stream, but found another"),
    (b"engine: !!python/object:os.system x\n", "malformed YAML: line 1, column 9"),
    (b"[" * 5000, "exceeded maximum nesting depth"),
    (b"param: {day: 2020-13-45}\n", "malformed YAML: month must be in 1..12"),
    (b"- engine: dummy\n", "a batch request must be a YAML mapping of fields"),
    (b"just text\n", "not the string 'just text'"),
    # YAML 1.1 numbers that are not plain decimal
    (BASE.replace("n_runs: 3", "n_runs: 0x10").encode(), "field 'n_runs' must be an integer, not '0x10'"),
    (BASE.replace("n_runs: 3", "n_runs: 1:30").encode(), "field 'n_runs' must be an integer, not '1:30'"),
    (BASE.replace("n_runs: 3", "n_runs: 1_000").encode(), "field 'n_runs' must be an integer, not '1_000'"),
    (BASE.replace("n_runs: 3", "n_runs: 0o17").encode(), "field 'n_runs' must be an integer, not '0o17'"),
    (BASE.encode() + b"max_attempts: 0b11\n", "field 'max_attempts' must be an integer, not '0b11'"),
    (BASE.encode() + b"time_limit: 1:30\n", "field 'time_limit' must be a number of seconds or null, not '1:30'"),
    (BASE.encode() + b"param: {steps: 1_000}\n", "field 'param': param.steps is '1_000', which is not a plain decimal"),
    # names are plain text
    (BASE.encode() + b'name: "a\\x07b"\n', "field 'name' contains a control character (U+0007)"),
    (BASE.encode() + b'group: "\\u2067x"\n', "field 'group' contains a bidirectional-text control (U+2067)"),
    (BASE.encode() + b'idempotency_key: "k\\0"\n', "field 'idempotency_key' contains a control character"),
    # field names
    (BASE.encode() + b"prio: 3\n", "unknown field 'prio'"),
    (BASE.encode() + b"priority: 1.5\n", "field 'priority' must be an integer, not"),
    (BASE.encode() + b"priority: 1000001\n", "field 'priority' must be at most 1000000, not 1000001"),
    (BASE.encode() + b"priority: '3'\n", "field 'priority' must be an integer"),
    (BASE.encode() + b"1: x\n", "unknown field 1"),
    (b"n_runs: 3\n", "field 'engine' is required"),
    (b"engine: dummy\n", "field 'n_runs' is required"),
    # engine
    (b"engine: ''\nn_runs: 3\n", "field 'engine' must be a non-empty string"),
    (b"engine: null\nn_runs: 3\n", "field 'engine' must be a non-empty string, not null"),
    (b"engine: 5\nn_runs: 3\n", "field 'engine' must be a non-empty string, not 5"),
    # n_runs
    (b"engine: dummy\nn_runs: 0\n", "field 'n_runs' must be at least 1, not 0"),
    (b"engine: dummy\nn_runs: -2\n", "field 'n_runs' must be at least 1"),
    (b"engine: dummy\nn_runs: 100000001\n", "field 'n_runs' must be at most 100000000"),
    (b"engine: dummy\nn_runs: 3.0\n", "field 'n_runs' must be an integer, not 3.0"),
    (b"engine: dummy\nn_runs: '3'\n", "field 'n_runs' must be an integer, not the string '3'"),
    (b"engine: dummy\nn_runs: true\n", "field 'n_runs' must be an integer, not true"),
    (b"engine: dummy\nn_runs: null\n", "field 'n_runs' must be an integer, not null"),
    # name, group, user
    (BASE.encode() + b"name: [a]\n", "field 'name' must be a string, not a list"),
    (BASE.encode() + b"group: 1.5\n", "field 'group' must be a string, not 1.5"),
    (BASE.encode() + b"user: yes\n", "field 'user' must be a string, not true (YAML reads yes/no"),
    (BASE.encode() + b"name: 2020-01-01\n", "field 'name' must be a string, not the date/time 2020-01-01"),
    (BASE.encode() + b"user: {a: 1}\n", "field 'user' must be a string, not a mapping"),
    # param
    (BASE.encode() + b"param: [1, 2]\n", "field 'param' must be a mapping, not a list"),
    (BASE.encode() + b"param: 5\n", "field 'param' must be a mapping, not 5"),
    (BASE.encode() + b"param: {1: a}\n", "field 'param': key 1 in param is not a string; quote it"),
    (BASE.encode() + b"param: {a: {yes: 1}}\n", "field 'param': key true (YAML reads"),
    (BASE.encode() + b"param: {start: 2020-01-02}\n", "field 'param': param.start is the date/time 2020-01-02"),
    (BASE.encode() + b"param: {x: .nan}\n", "field 'param': param.x is nan, which JSON cannot carry"),
    (BASE.encode() + b"param: {x: [1, -.inf]}\n", "field 'param': param.x[1] is -inf"),
    (BASE.encode() + b"param: {b: !!binary aGk=}\n", "field 'param': param.b is a YAML bytes"),
    (BASE.encode() + b"param: {s: !!set {a}}\n", "field 'param': param.s is a YAML set"),
    (BASE.encode() + b"param: &a {x: *a}\n", "request body: the document has more than 100000 nodes"),
    (BASE.encode() + b"param: {x: " + b"[" * 70 + b"]" * 70 + b"}\n", "field 'param' is nested more than 64"),
    # max_attempts, max_requeues
    (BASE.encode() + b"max_attempts: 0\n", "field 'max_attempts' must be at least 1, not 0"),
    (BASE.encode() + b"max_attempts: two\n", "field 'max_attempts' must be an integer"),
    (BASE.encode() + b"max_attempts: 3000000000\n", "field 'max_attempts' must be at most 2147483647"),
    (BASE.encode() + b"max_requeues: -1\n", "field 'max_requeues' must be at least 0, not -1"),
    (BASE.encode() + b"max_requeues: false\n", "field 'max_requeues' must be an integer, not false"),
    # time_limit
    (BASE.encode() + b"time_limit: 0\n", "field 'time_limit' must be a number of seconds > 0, not 0"),
    (BASE.encode() + b"time_limit: -1.5\n", "field 'time_limit' must be a number of seconds > 0"),
    (BASE.encode() + b"time_limit: .inf\n", "field 'time_limit' must be a number of seconds > 0, not inf"),
    (BASE.encode() + b"time_limit: 10s\n", "field 'time_limit' must be a number of seconds or null"),
    (BASE.encode() + b"time_limit: true\n", "field 'time_limit' must be a number of seconds or null"),
    # idempotency_key
    (BASE.encode() + b"idempotency_key: 12345\n", "field 'idempotency_key' must be a string, not 12345"),
    (BASE.encode() + b"idempotency_key: ''\n", "field 'idempotency_key' must be 1 to 200 characters long, not 0"),
    (BASE.encode() + b"idempotency_key: " + b"k" * 201 + b"\n", "must be 1 to 200 characters long, not 201"),
])
def test_invalid_requests_name_the_problem(body, message):
    with pytest.raises(InvalidRequest) as caught:
        parse(body)
    assert message in str(caught.value)


def test_alias_bomb_is_refused_without_expanding_it():
    lines = ['a0: &a0 ["' + "x" * 1000 + '"]']
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 30)]
    body = BASE + "param:\n" + "".join(f"  {line}\n" for line in lines)
    with pytest.raises(InvalidRequest, match="request body: the document has more than 100000 nodes"):
        parse(body.encode())


@pytest.mark.parametrize("field, header, expected", [
    (None, "key-1", "key-1"),
    ("key-1", "key-1", "key-1"),
    ("key-1", None, "key-1"),
    (None, "ключ-東京", "ключ-東京"),
])
def test_idempotency_key_from_header_or_field(field, header, expected):
    body = BASE + (f"idempotency_key: {field}\n" if field else "")
    assert parse(body.encode(), header)["idempotency_key"] == expected


@pytest.mark.parametrize("field, header, message", [
    ("key-1", "key-2", "header 'Idempotency-Key' and field 'idempotency_key' differ"),
    (None, "", "header 'Idempotency-Key' must be 1 to 200 characters long"),
    (None, "h" * 201, "header 'Idempotency-Key' must be 1 to 200 characters long, not 201"),
])
def test_bad_idempotency_header(field, header, message):
    body = BASE + (f"idempotency_key: {field}\n" if field else "")
    with pytest.raises(InvalidRequest, match=message):
        parse(body.encode(), header)


def test_byte_order_mark_is_ignored():
    assert parse("\ufeff".encode() + BASE.encode()) == {"engine": "dummy", "n_runs": 3}


@pytest.mark.parametrize("extra, expected", [
    ("description: a sweep over seeds\n", {"description": "a sweep over seeds"}),
    ("description: |\n  two lines\n  \twith a tab\n", {"description": "two lines\n\twith a tab\n"}),
    ("description: null\n", {"description": ""}),
])
def test_a_description_is_free_text_over_lines(extra, expected):
    fields = parse((BASE + extra).encode())
    assert {k: v for k, v in fields.items() if k == "description"} == expected
    protocol.message("StartBatch", **fields)


@pytest.mark.parametrize("extra, complaint", [
    ("description: 5\n", "field 'description' must be a string"),
    ('description: "a\\x1bb"\n', "field 'description' contains a control character"),
    ("description: " + "x" * 10_001 + "\n", "field 'description' is longer than 10000 characters"),
])
def test_a_bad_description_is_refused_naming_it(extra, complaint):
    with pytest.raises(InvalidRequest, match=complaint):
        parse((BASE + extra).encode())


@pytest.mark.parametrize("body, where", [
    (b"engine: dummy\nn_runs: 1\nparam: {big: 1180591620717411303424}\n", "param.big"),
    (b"engine: dummy\nn_runs: 1\nparam: {deep: [1, {x: -9223372036854775809}]}\n", "param.deep[1].x"),
    (b"engine: dummy\nparam: {a: 1}\nsweep: {a: [1, 99999999999999999999]}\n", "sweep"),
])
def test_an_integer_outside_64_bits_anywhere_is_a_400_naming_it(body, where):
    """Not a 502 'bad exchange with runq' (runq refuses such a frame): a clear 400 at runweb."""
    with pytest.raises(batch_request.InvalidRequest, match=r"outside the 64-bit integers") as exc:
        batch_request.parse(body)
    assert where in str(exc.value)
