"""runweb/media.py for the page cache (issue 10): a page split into header and rest must still be one
valid document equal to the uncached reply."""
import pytest
import yaml

from runweb import media


@pytest.mark.parametrize("text", ["x\n\n", "\n\n", "é\n\n\n"])
def test_yaml_head_and_rest_join_into_one_document(text):
    """A header string ending in blank lines is a |+ block; YAML ends such a document with '...',
    which made head + rest two documents."""
    head = {"status": "ok", "message": "ok", "batch": {"id": 1, "param": {"note": text}}}
    rest = {"runs": [], "offset": 0, "limit": 1, "next_offset": None}
    assert yaml.safe_load(media.head_of(head, media.YAML) + media.rest_of(rest, media.YAML)) == {**head, **rest}



def test_the_yaml_header_memo_is_bounded_by_bytes():
    """Every request for a running batch's page has a new header (elapsed); a header carries the
    batch's param (up to 1 MB): 256 kept headers of a big param were hundreds of MB per process."""
    import sys
    media._YAML_HEADS.clear()
    param = {"data": ["x" * 60] * 3000}   # about 200 KB as JSON
    for i in range(256):
        head = {"status": "ok", "message": "ok", "batch": {"id": 1, "param": param, "elapsed": i / 10}}
        assert media.head_of(head, media.YAML) == media.dump_yaml(head).encode()
    kept = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in media._YAML_HEADS.items())
    assert kept <= 16 * 1024 * 1024, f"{kept} bytes of YAML headers kept"
    small = {"status": "ok", "message": "ok", "batch": {"id": 2, "param": {}, "elapsed": 1.0}}
    media.head_of(small, media.YAML)
    assert media._dump_json(small) in media._YAML_HEADS   # small headers are still kept
