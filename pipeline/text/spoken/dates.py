"""Dates, times, years and decades in their spoken forms."""

from __future__ import annotations

import re

from pipeline.text.spoken.words import cardinal, digits_spoken, ordinal, plural, year

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
_SHORT = {m[:3]: m for m in MONTHS} | {"Sept": "September"}
_MONTH = r"(January|February|March|April|May|June|July|August|September|October|November|December|" \
         r"(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?)"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(1\d{3}|20\d{2})"

_ISO = re.compile(rf"(?<![\w-]){_YEAR}-(\d{{2}})-(\d{{2}})(?![\w-])")
_MONTH_DAY = re.compile(rf"\b{_MONTH}\s{_DAY}(?:,?\s{_YEAR})?(?![\w:])")  # March 5, 2024
_DAY_MONTH = re.compile(rf"(?<![\w.]){_DAY}\s{_MONTH}(?:,?\s{_YEAR})?(?![\w:])")  # 5 March 2024
_SLASHED = re.compile(r"(?<![\w/.])(\d{1,2})/(\d{1,2})/(\d{4})(?![\w/])")  # 3/5/2024: month first

_DECADE_SHORT = re.compile(r"(?<!\w)['’]?([1-9]0)['’]?s\b")  # the '80s, the 80s
_DECADE = re.compile(r"(?<![\w.,])(1\d{2}0|20\d0)['’]?s\b")  # 1970s, 1900s
_YEAR_ALONE = re.compile(rf"(?<![\w.,$£€¥-]){_YEAR}(?![\w%°]|[.,:]\d|\s?[-–/]\s?\d)(\s+(?:AD|BC|BCE|CE)\b)?")
# After a year-like number, these words keep it a year ("in 1999 and", "1990 to 1995").
_YEAR_FOLLOWERS = frozenset("to and or through until till when after before was is saw".split())
# Before a year-like number, these words make it a year whatever follows ("in 1999 the").
_YEAR_LEADERS = frozenset("in since by from until till during before after circa year around early late mid".split())

_MERIDIEM = r"([ap])\.?\s?m\b\.?"
_CLOCK_12 = re.compile(rf"(?<![\w.:])(\d{{1,2}})(?::([0-5]\d))?\s?{_MERIDIEM}", re.IGNORECASE)
_ENDED = re.compile(r"\s*(?:$|[A-Z\"“])")  # what follows a period that ended its sentence
_CLOCK_24 = re.compile(r"(?<![\w.:])([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?(?![\w:]|[.,]\d)")


def _month_name(raw: str) -> str:
    return _SHORT.get(raw.rstrip("."), raw.rstrip("."))


def _date(month: int, day: int, year_digits: str | None) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    spoken = f"{MONTHS[month - 1]} {ordinal(str(day))}"
    return f"{spoken}, {year(year_digits)}" if year_digits else spoken


def dates(text: str) -> str:
    def iso(match: re.Match) -> str:
        y, m, d = match.groups()
        return _date(int(m), int(d), y) or match.group(0)

    def month_day(match: re.Match) -> str:
        month, day, y = match.groups()
        return _date(MONTHS.index(_month_name(month)) + 1, int(day), y) or match.group(0)

    def day_month(match: re.Match) -> str:
        day, month, y = match.groups()
        if not 1 <= int(day) <= 31:
            return match.group(0)
        spoken = f"the {ordinal(day)} of {_month_name(month)}"
        return f"{spoken} {year(y)}" if y else spoken

    def slashed(match: re.Match) -> str:
        first, second, y = (int(g) for g in match.groups())
        month, day = (first, second) if first <= 12 else (second, first)
        return _date(month, day, str(y)) or match.group(0)

    text = _ISO.sub(iso, text)
    text = _MONTH_DAY.sub(month_day, text)
    text = _DAY_MONTH.sub(day_month, text)
    return _SLASHED.sub(slashed, text)


def decades(text: str) -> str:
    def short(match: re.Match) -> str:
        return plural(cardinal(match.group(1)))

    def full(match: re.Match) -> str:
        words = year(match.group(1))
        if words.endswith("thousand"):  # 2000s
            return words + "s"
        head, _, last = words.rpartition(" ")
        return f"{head} {plural(last)}".strip()

    return _DECADE_SHORT.sub(short, _DECADE.sub(full, text))


def years(text: str) -> str:
    """A four-digit number from 1000 to 2099 is a year unless a word other than a connector
    follows it ("1500 soldiers" is a count, "in 1999," and "1990 to 1995" are years)."""

    def say(match: re.Match) -> str:
        digits, era = match.groups()
        after = text[match.end():match.end() + 40].lstrip()  # bounded: linear on any text
        next_word = re.match(r"[A-Za-z]+", after)
        previous = re.search(r"([A-Za-z]+)\W*$", text[max(0, match.start() - 20):match.start()])
        led = previous is not None and previous.group(1).lower() in _YEAR_LEADERS
        if not era and not led and next_word and next_word.group(0).lower() not in _YEAR_FOLLOWERS and after[:1].islower():
            return match.group(0)
        return year(digits) + (f" {' '.join(era.split()[0])}" if era else "")

    return _YEAR_ALONE.sub(say, text)


def times(text: str) -> str:
    def twelve(match: re.Match) -> str:
        hour, minutes, half = match.groups()
        if not 1 <= int(hour) <= 12:
            return match.group(0)
        spoken = cardinal(hour) + (f" {digits_spoken(minutes)}" if minutes and minutes != "00" else "")
        # "at 5 p.m. Then" ended a sentence: keep its period.
        ended = match.group(0).endswith(".") and _ENDED.match(text, match.end())
        return f"{spoken} {half.upper()} M" + ("." if ended else "")

    def clock(match: re.Match) -> str:
        hour, minutes, seconds = match.groups()
        if seconds:
            return f"{cardinal(hour)} {digits_spoken(minutes)} and {cardinal(seconds)} seconds"
        if minutes == "00":
            return cardinal(hour) + (" hundred" if int(hour) > 12 or hour.startswith("0") else " o'clock")
        return f"{cardinal(hour)} {digits_spoken(minutes)}"

    return _CLOCK_24.sub(clock, _CLOCK_12.sub(twelve, text))
