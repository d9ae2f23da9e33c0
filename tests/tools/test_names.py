"""Exposed tool names: safe for every provider, stable, distinct."""

from __future__ import annotations

import re

from parley.tools.names import exposed_names, hashed_name

SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def test_a_name_that_fits_stays_as_it_is() -> None:
    assert exposed_names([("demo", "calculate"), ("files", "read-file")]) == {
        ("demo", "calculate"): "demo__calculate",
        ("files", "read-file"): "files__read-file",
    }


def test_other_characters_are_replaced_and_the_name_marked_with_a_hash() -> None:
    names = exposed_names([("web", "fetch.url"), ("web", "fetch url"), ("web", "fetch_url")])
    assert names[("web", "fetch_url")] == "web__fetch_url"
    assert names[("web", "fetch.url")] == hashed_name("web", "fetch.url")
    assert re.fullmatch(r"web__fetch_url_[0-9a-f]{8}", names[("web", "fetch.url")])
    assert len(set(names.values())) == 3
    assert all(SAFE.fullmatch(name) for name in names.values())


def test_a_long_name_is_cut_to_64_with_a_hash() -> None:
    long_tool = "summarise_the_quarterly_report_of_every_department_in_the_company_and_more"
    names = exposed_names([("reports", long_tool), ("reports", long_tool + "_again")])
    first, second = names[("reports", long_tool)], names[("reports", long_tool + "_again")]
    assert len(first) == len(second) == 64
    assert first != second
    assert first.startswith("reports__summarise_the_quarterly_report_of_every_depart")
    exact = "s__" + "t" * 61
    assert exposed_names([("s", "t" * 61)]) == {("s", "t" * 61): exact}


def test_names_that_meet_all_take_the_hashed_form_whatever_the_order() -> None:
    pairs = [("a__b", "c"), ("a", "b__c"), ("x", "y")]
    names = exposed_names(pairs)
    assert names[("x", "y")] == "x__y"
    assert names[("a__b", "c")] == hashed_name("a__b", "c")
    assert names[("a", "b__c")] == hashed_name("a", "b__c")
    assert exposed_names(reversed(pairs)) == names


def test_a_tool_named_like_a_hashed_name_cannot_take_it_from_another() -> None:
    hashed = hashed_name("web", "fetch.url")  # web__fetch_url_<hash>
    impostor = hashed.removeprefix("web__")
    names = exposed_names([("web", "fetch.url"), ("web", impostor)])
    assert len(set(names.values())) == 2
    assert all(SAFE.fullmatch(name) for name in names.values())
    assert names == exposed_names([("web", impostor), ("web", "fetch.url")])


def test_an_empty_or_unicode_tool_name_still_gets_a_safe_name() -> None:
    names = exposed_names([("s", ""), ("s", "résumé"), ("s", "ツール")])
    assert names[("s", "")] == "s__"
    assert all(SAFE.fullmatch(name) for name in names.values())
    assert len(set(names.values())) == 3


def test_a_hashed_name_already_taken_gets_a_number() -> None:
    meeting = [("a__b", "c"), ("a", "b__c")]  # both a__b__c: both take their hashed names
    squatter = ("a", hashed_name("a__b", "c").removeprefix("a__"))  # plainly named like the first of them
    names = exposed_names([*meeting, squatter])
    assert names[squatter] == hashed_name("a__b", "c")
    assert names[("a__b", "c")] == hashed_name("a__b", "c") + "_2"
    assert names[("a", "b__c")] == hashed_name("a", "b__c")
    assert all(SAFE.fullmatch(name) for name in names.values())
