"""Capital letters as marker pieces: marking is undone exactly, for any text."""

from hypothesis import given
from hypothesis import strategies as st

from gemini_jax.data.case_markers import CAPITAL, mark_capitals, restore_capitals


def test_markers_go_before_the_space_in_front_of_a_capitalised_word():
    assert mark_capitals("What is Red?") == "<cap>what is<cap> red?"
    assert mark_capitals("ABc") == "<cap>a<cap>bc"
    assert mark_capitals("İ ẞ 5") == "İ ẞ 5"  # capitals whose lower case does not map back stay


def test_a_marker_not_followed_by_a_letter_is_dropped():
    assert restore_capitals(["x", "", " 5", "y"]) == "x 5Y"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60).filter(lambda t: CAPITAL not in t))
def test_restore_undoes_mark(text):
    assert restore_capitals(mark_capitals(text).split(CAPITAL)) == text
