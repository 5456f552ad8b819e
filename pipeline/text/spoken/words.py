"""Number words from inflect (MIT): the one place the library is called."""

from __future__ import annotations

import functools

import inflect


@functools.cache
def _engine() -> inflect.engine:
    return inflect.engine()


# Longer numbers (an id, a run of digits) are read digit by digit, and past a line's worth left as they are.
MAX_NAMED_DIGITS = 15
MAX_READ_DIGITS = 40


@functools.lru_cache(maxsize=4096)  # inflect takes ~0.1 ms a number; books repeat them
def cardinal(number: str) -> str:
    """'1,234' -> 'one thousand two hundred thirty-four'; '3.14' -> 'three point one four';
    '-5' -> 'minus five'. `number` is digits with optional grouping commas, decimals and sign."""
    digits = number.replace(",", "")
    sign = ""
    if digits[:1] in ("-", "−"):
        sign, digits = "minus ", digits[1:]
    whole, _, decimals = digits.partition(".")
    if len(whole) > MAX_READ_DIGITS or len(decimals) > MAX_READ_DIGITS:
        return number
    if len(whole) > MAX_NAMED_DIGITS:
        spelled = " ".join(_engine().number_to_words(d) for d in whole)
        return sign + spelled + (f" point {' '.join(_engine().number_to_words(d) for d in decimals)}" if decimals else "")
    return sign + _engine().number_to_words(digits, comma="", andword="")


@functools.lru_cache(maxsize=4096)
def ordinal(number: str) -> str:
    """'21' -> 'twenty-first'."""
    return _engine().ordinal(cardinal(number))


def plural(word: str) -> str:
    """'seventy' -> 'seventies', 'pound' -> 'pounds'."""
    return _engine().plural(word)


@functools.lru_cache(maxsize=4096)
def year(number: str) -> str:
    """A four-digit year as said: 1999 'nineteen ninety-nine', 1905 'nineteen oh five',
    1900 'nineteen hundred', 2000 'two thousand', 2007 'two thousand seven', 2024 'twenty
    twenty-four'."""
    value = int(number)
    century, rest = divmod(value, 100)
    if value % 1000 == 0 or 2000 <= value < 2010:
        return cardinal(number)
    if rest == 0:
        return f"{cardinal(str(century))} hundred"
    if rest < 10:
        return f"{cardinal(str(century))} oh {cardinal(str(rest))}"
    return f"{cardinal(str(century))} {cardinal(str(rest))}"


def digits_spoken(number: str) -> str:
    """Minutes and the like: '05' -> 'oh five', '30' -> 'thirty'."""
    if len(number) == 2 and number[0] == "0":
        return f"oh {cardinal(number[1])}"
    return cardinal(number)
