"""``JsonNumber``: the exact numbers of ``message_to_dict`` (see ``pycdc/src/seed.rs``)."""

from __future__ import annotations

from decimal import Decimal

__all__ = ["JsonNumber"]


class JsonNumber(Decimal):
    """An exact number of a message's JSON (a numeric or money column): a ``Decimal`` that
    also equals the ``float`` a JSON parser reads from the same digits.

    ``message_to_dict(m)`` holds these where ``message_to_debezium_json(m)`` has the exact
    digits, so the dict equals ``json.loads`` of the JSON (numbers as floats) and
    ``json.loads(..., parse_float=Decimal)`` (numbers exact) alike, without a float ever
    holding the value. Against ``Decimal`` and ``int`` it compares exactly; it hashes as its
    ``Decimal`` value.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, float):
            return float(self) == other
        return Decimal.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = Decimal.__hash__

    def __repr__(self) -> str:
        return f"JsonNumber('{self}')"
