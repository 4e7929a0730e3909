"""Review of the page cache (issue 10): a page split into header and rest must still be one
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

