"""Word error rate and its normalisation: pure logic, no servers."""

import pytest

from pipeline.wer import edit_distance, normalise, word_error_rate


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
