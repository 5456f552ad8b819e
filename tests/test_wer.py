"""Word error rate and its normalisation: pure logic, no servers."""

import pytest

from pipeline.audio.wer import edit_distance, normalise, word_error_rate


def test_identical_texts_have_no_errors():
    assert word_error_rate("the cat sat on the mat", "the cat sat on the mat") == 0.0


def test_case_and_punctuation_are_not_errors():
    assert word_error_rate('"Hello," she said. "It\'s late!"', "hello she said its late") == 0.0


@pytest.mark.parametrize(
    "written,spoken",
    [
        ("I paid $25 on the 3rd", "I paid twenty-five dollars on the third"),
        ("In 1999 we moved", "In nineteen ninety-nine we moved"),
        ("It costs $4.5 million", "It costs four point five million dollars"),
        ("about 10% more", "about ten percent more"),
        ("40,000 people", "forty thousand people"),
        ("room 105", "room one hundred five"),
        ("the train left at 6:15", "the train left at six fifteen"),
        ("at 7:05 sharp", "at seven oh five sharp"),
        ("salt & pepper", "salt and pepper"),
        ("Dr. Park and Mr. Ortiz", "Doctor Park and Mister Ortiz"),
        ("Mrs. Chen, okay?", "Missus Chen, OK."),
        ("the 21st century", "the twenty first century"),
    ],
)
def test_numbers_written_or_spoken_are_the_same_words(written, spoken):
    assert normalise(written) == normalise(spoken)
    assert word_error_rate(written, spoken) == 0.0


def test_year_reading_only_for_plain_four_digit_years():
    assert normalise("2024") == ["twenty", "twenty", "four"]
    assert normalise("2,024") == ["two", "thousand", "twenty", "four"]
    assert normalise("3000") == ["three", "thousand"]


@pytest.mark.parametrize(
    "reference,hypothesis,errors",
    [
        ("a b c d", "a x c d", 1),  # substitution
        ("a b c d", "a c d", 1),  # deletion
        ("a b c d", "a b b c d", 1),  # insertion
        ("a b c d", "d c b a", 4),
        ("a b c d", "", 4),
    ],
)
def test_wer_counts_substitutions_deletions_insertions(reference, hypothesis, errors):
    assert edit_distance(reference.split(), hypothesis.split()) == errors
    assert word_error_rate(reference, hypothesis) == pytest.approx(errors / 4)


def test_wer_can_exceed_one_with_many_insertions():
    assert word_error_rate("yes", "no no no") == pytest.approx(3.0)


def test_empty_reference():
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("...", "something") == 1.0


def test_a_real_recogniser_mistake_counts():
    reference = "Let the dough rest for at least 45 minutes."
    heard = "Let the door rest for at least forty-five minutes"
    # "45" counts as its two spoken words: 1 error in 10.
    assert word_error_rate(reference, heard) == pytest.approx(1 / 10)


def test_a_clock_time_heard_with_a_dot_or_as_a_number_is_the_same_time():
    # Whisper tiny.en writes the spoken "six fifteen" of "6:15" as "6.15" or "615".
    assert word_error_rate("Meet me at 6:15.", "Meet me at 6.15.") == 0.0
    assert word_error_rate("Doors open at 7:05, not 7:50.", "Doors open at 7.05, not 7.50") == 0.0
    assert word_error_rate("Meet me at 6:15.", "Meet me at 615.") == 0.0
    # Only the reference's own times: another dotted number stays a decimal, and so does a
    # decimal the reference wrote as one.
    assert word_error_rate("Meet me at 6:15.", "Meet me at 6.16.") == pytest.approx(3 / 5)
    assert word_error_rate("It weighs 6.15 kilos", "It weighs six fifteen kilos") == pytest.approx(3 / 7)
    assert word_error_rate("At 6:15 it weighs 16.15 kilos", "At 6.15 it weighs 16.15 kilos") == 0.0
    assert word_error_rate("At 6:15 room 2615", "At 615 room 2615") == 0.0
    assert word_error_rate("At 6:15 pay 1,615", "At 615 pay 1,615") == 0.0
    assert word_error_rate("Room 105 at 1:05", "Room 105 at 1.05") == 0.0


def test_a_number_grouped_otherwise_than_in_the_reference_is_the_same_number():
    # tiny.en heard the year "1887" and wrote "1,887".
    assert word_error_rate("a logbook from 1887", "a logbook from 1,887") == 0.0
    assert word_error_rate("more than 40,000 people", "more than 40000 people") == 0.0
    # Numbers the reference does not hold keep their own reading.
    assert word_error_rate("a logbook from 1887", "a logbook from 1,888") == pytest.approx(5 / 6)
    assert word_error_rate("in 1887, 12.5 tons", "in 1887, 1,887.5 tons") > 0
