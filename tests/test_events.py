import numpy as np
import pytest

from pkpd.events import (
    BOLUS,
    IMPLIED_OFFSET,
    INFUSION_END,
    INFUSION_START,
    PAD,
    RESET,
    DoseRecords,
    build_event_table,
    expand_subject,
)


def records(**kw):
    n = len(kw["time"])
    base = dict(
        amount=np.zeros(n),
        cmt=np.zeros(n, int),
        rate=np.zeros(n),
        duration=np.zeros(n),
        ii=np.zeros(n),
        addl=np.zeros(n, int),
        evid=np.ones(n, int),
        seq=np.arange(2.0, 2 + n),
    )
    base.update({k: np.asarray(v) for k, v in kw.items()})
    return DoseRecords(**base)


def test_addl_expands_to_individual_doses_after_records():
    e = expand_subject(records(time=[0.0], amount=[100.0], ii=[12.0], addl=[3]))
    np.testing.assert_allclose(e["time"], [0, 12, 24, 36])
    assert list(e["kind"]) == [BOLUS] * 4
    np.testing.assert_allclose(e["amount"], 100.0)
    # the parent record keeps its line; implied doses come after every record at their time
    assert e["seq"][0] == 2.0
    assert np.all(e["seq"][1:] == 2.0 + IMPLIED_OFFSET)


def test_infusion_gets_linked_end_event():
    e = expand_subject(records(time=[1.0, 5.0], amount=[50.0, 10.0], rate=[10.0, 0.0]))
    assert list(e["kind"]) == [INFUSION_START, INFUSION_END, BOLUS]
    assert e["link"][0] == 1 and e["link"][1] == 0 and e["link"][2] == -1
    assert e["rate"][0] == 10.0 and e["rate"][1] == 10.0


def test_infusion_by_duration_is_an_infusion():
    e = expand_subject(records(time=[0.0], amount=[50.0], duration=[2.0]))
    assert list(e["kind"]) == [INFUSION_START, INFUSION_END]
    assert e["duration"][0] == 2.0


def test_evid4_is_reset_then_dose_and_evid3_reset_only():
    e = expand_subject(
        records(time=[0.0, 24.0, 48.0], amount=[1.0, 0.0, 2.0], evid=[1, 3, 4], cmt=[0, -1, 0])
    )
    assert list(e["kind"]) == [BOLUS, RESET, RESET, BOLUS]
    # the reset of an EVID 4 record precedes its own dose
    assert e["seq"][2] < e["seq"][3]
    assert e["cmt"][1] == -1 and e["amount"][1] == 0.0


def test_events_sorted_by_time_then_record_order():
    e = expand_subject(records(time=[24.0, 0.0, 24.0], amount=[1.0, 2.0, 3.0], seq=[5.0, 2.0, 3.0]))
    np.testing.assert_allclose(e["time"], [0, 24, 24])
    np.testing.assert_allclose(e["amount"], [2, 3, 1])


def test_table_pads_at_end_with_no_ops():
    a = records(time=[0.0], amount=[1.0], ii=[24.0], addl=[2])
    b = records(time=[6.0], amount=[5.0])
    empty = records(time=np.zeros(0))
    t = build_event_table([a, b, empty])
    assert t.shape == (3, 3)
    assert list(t.mask[1]) == [True, False, False]
    assert list(t.kind[1]) == [BOLUS, PAD, PAD]
    # padding sits at the subject's last event time so it opens no new interval
    assert list(t.time[1]) == [6.0, 6.0, 6.0]
    assert not t.mask[2].any() and np.all(t.kind[2] == PAD)
    assert np.all(t.amount[~t.mask] == 0.0)


@pytest.mark.parametrize("addl", [0, 1, 5])
def test_total_amount_is_conserved(addl):
    e = expand_subject(records(time=[0.0], amount=[7.0], ii=[8.0], addl=[addl]))
    assert e["amount"].sum() == pytest.approx(7.0 * (addl + 1))
