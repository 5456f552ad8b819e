"""Numbers in words: ranges, currency, percentages and units, ordinals, fractions, the rest."""

from __future__ import annotations

import re

from pipeline.text.spoken.words import cardinal, ordinal, plural

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"

# "pages 3-5", "1990–1995": a dash between two plain numbers (not a date, phone number or id).
_RANGE = re.compile(r"(?<![\w.,/:-])(\d{1,4})\s?[-–—]\s?(\d{1,4})(?![\w/:]|[-–.,]\d)")

# name singular, plural; (symbol, singular, plural)
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents"), "¥": ("yen", "yen", "", "")}
_SCALES = {"k": "thousand", "thousand": "thousand", "m": "million", "mn": "million", "million": "million",
           "bn": "billion", "billion": "billion", "tn": "trillion", "trillion": "trillion"}
_CURRENCY = re.compile(
    r"(?<![\w$£€¥])([-−])?([$£€¥])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?"
    r"(?:(k|m|mn|bn|tn)\b|\s(thousand|million|billion|trillion)\b)?(?![\d.,]\d)"
)

# Written unit -> (singular, plural). Case matters: "m" metres, "M" is not a unit here.
_UNITS = {
    "km": ("kilometre", "kilometres"), "m": ("metre", "metres"), "cm": ("centimetre", "centimetres"),
    "mm": ("millimetre", "millimetres"), "mi": ("mile", "miles"), "ft": ("foot", "feet"),
    "yd": ("yard", "yards"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
    "oz": ("ounce", "ounces"), "l": ("litre", "litres"), "L": ("litre", "litres"), "ml": ("millilitre", "millilitres"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometre per hour", "kilometres per hour"),
    "kph": ("kilometre per hour", "kilometres per hour"), "m/s": ("metre per second", "metres per second"),
    "ms": ("millisecond", "milliseconds"), "s": ("second", "seconds"), "sec": ("second", "seconds"),
    "min": ("minute", "minutes"), "h": ("hour", "hours"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"), "KB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"), "W": ("watt", "watts"),
    "kW": ("kilowatt", "kilowatts"), "V": ("volt", "volts"), "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"), "°": ("degree", "degrees"), "%": ("percent", "percent"),
    "m²": ("square metre", "square metres"), "km²": ("square kilometre", "square kilometres"),
    "m³": ("cubic metre", "cubic metres"), "cm³": ("cubic centimetre", "cubic centimetres"),
}
_UNIT_NAMES = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
# A unit right after a number, the unit ending the word ("5 km", "5km", "20°C", "50%").
_UNIT = re.compile(rf"(?<![\w.])([-−]?(?:{_NUMBER}))\s?({_UNIT_NAMES})(?![\w²³])")
_ORDINAL = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th)\b")
_FRACTION = re.compile(r"(?<![\w./])(\d{1,2})/(\d{1,2})(?![\w/]|[.,]\d)")
_DENOMINATORS = {"2": ("half", "halves"), "4": ("quarter", "quarters")}
# A sign only where it cannot be a hyphen or a minus between two operands: "-5", "(-3.2)".
# Digits joined by dashes that are no range (2024-13-45, 555-1234, 10-5) are left as written.
_PLAIN = re.compile(rf"(?<![\w.])(?<!\d[-–])((?:(?<![^\s(\[])[-−])?(?:{_NUMBER}))(?!\w|\.\d|[-–]\d)")


def ranges(text: str) -> str:
    """Only rising pairs are ranges: "10-5" is a score, "555-1234" a phone number."""

    def say(match: re.Match) -> str:
        low, high = match.groups()
        if int(low) >= int(high) or (len(low) == 3 and len(high) == 4):
            return match.group(0)
        return f"{low} to {high}"

    return _RANGE.sub(say, text)


def _amount(units: str, cents: str | None, names: tuple[str, str, str, str]) -> str:
    one, many, cent, cents_name = names
    spoken = f"{cardinal(units)} {one if units == '1' else many}"
    if cents is None or not cent:
        return spoken
    hundredths = int((cents + "0")[:2]) if len(cents) <= 2 else None
    if hundredths is None:  # "$1.505": a decimal amount, not cents
        return f"{cardinal(units + '.' + cents)} {many}"
    if hundredths == 0:
        return spoken
    small = f"{cardinal(str(hundredths))} {cent if hundredths == 1 else cents_name}"
    return small if units == "0" else f"{spoken} and {small}"


def currency(text: str) -> str:
    def say(match: re.Match) -> str:
        sign, symbol, units, cents, short_scale, long_scale = match.groups()
        names = _CURRENCIES[symbol]
        scale = short_scale or long_scale
        if scale:
            number = units + (f".{cents}" if cents else "")
            spoken = f"{cardinal(number)} {_SCALES[scale.lower()]} {names[1]}"
        else:
            spoken = _amount(units.replace(",", ""), cents, names)
        return ("minus " if sign else "") + spoken

    return _CURRENCY.sub(say, text)


def units(text: str) -> str:
    def say(match: re.Match) -> str:
        number, unit = match.groups()
        one, many = _UNITS[unit]
        return f"{cardinal(number)} {one if number.lstrip('-−') == '1' else many}"

    return _UNIT.sub(say, text)


def ordinals(text: str) -> str:
    return _ORDINAL.sub(lambda m: ordinal(m.group(1)), text)


def fractions(text: str) -> str:
    def say(match: re.Match) -> str:
        top, bottom = match.groups()
        if bottom in ("0", "1") or int(top) >= int(bottom) or int(bottom) > 10:
            return match.group(0)
        one, many = _DENOMINATORS.get(bottom, (ordinal(bottom), plural(ordinal(bottom))))
        return f"{cardinal(top)} {one if top == '1' else many}"

    return _FRACTION.sub(say, text)


def plain(text: str) -> str:
    return _PLAIN.sub(lambda m: cardinal(m.group(1)), text)
