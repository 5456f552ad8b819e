"""The README documents every setting and opens with the two set-up commands."""

from pathlib import Path

from pipeline.contracts.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text()
    missing = [f"TTS_{name.upper()}" for name in Settings.model_fields if f"`TTS_{name.upper()}`" not in text]
    assert not missing, f"README.md settings table lacks {missing}"


def test_readme_opens_with_make_demo_and_make_test():
    head = README.read_text().split("##")[0]
    assert "make demo" in head and "make test" in head
