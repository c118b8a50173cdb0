import pytest

from pytest_chaos import DataLossDetected, check_no_data_loss


def test_everything_found():
    report = check_no_data_loss(["1", "2", "2", "3"], lambda ids: ids)
    assert (report.acknowledged, report.found, report.lost_count) == (3, 3, 0)


def test_missing_ids_are_named():
    with pytest.raises(DataLossDetected, match=r"2 of 4 acknowledged orders are missing: 2, 4"):
        check_no_data_loss(
            [1, 2, 3, 4],
            lambda ids: [i for i in ids if i in ("1", "3")],
            what="acknowledged orders",
        )


def test_is_an_assertion_error_so_pytest_reports_it_as_a_failure():
    with pytest.raises(AssertionError):
        check_no_data_loss(["1"], lambda ids: [])


def test_lookups_are_batched():
    seen = []
    check_no_data_loss(
        [str(i) for i in range(1201)], lambda ids: seen.append(len(ids)) or ids, batch=500
    )
    assert seen == [500, 500, 201]
