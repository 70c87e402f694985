"""Exceptions and results get their fields at construction: BadInput its request, Verification its fields by name."""

import image_io
import protocols
import pytest


def test_bad_input_carries_its_request_from_its_constructor():
    bare = image_io.BadInput("InvalidJSON", "no", 422)
    assert (bare.protocol, bare.request_id) == (None, None)
    located = bare.located(protocols.V2, "req-7")
    assert (located.kind, located.message, located.code) == ("InvalidJSON", "no", 422)
    assert (located.protocol, located.request_id) == (protocols.V2, "req-7")
    assert (bare.protocol, bare.request_id) == (None, None)  # the original is left as built


@pytest.mark.parametrize("body, protocol, request_id", [
    ({"instances": []}, protocols.V1, None),
    ({"id": "abc", "inputs": []}, protocols.V2, "abc"),
])
def test_parse_raises_a_bad_input_built_with_its_protocol_and_id(body, protocol, request_id):
    with pytest.raises(image_io.BadInput) as caught:
        protocols.parse({"body": body}, config=None)
    assert (caught.value.protocol, caught.value.request_id) == (protocol, request_id)
    assert set(vars(caught.value)) == {"kind", "message", "code", "protocol", "request_id"}


def test_a_verification_is_built_by_field_name_only():
    import dataclasses

    from marforge.archiving.verify import Verification

    with pytest.raises(TypeError):
        Verification("eager", [], 1, 1.0, 0.0, None, None, 1, 0.1)
    assert all(field.kw_only for field in dataclasses.fields(Verification))
