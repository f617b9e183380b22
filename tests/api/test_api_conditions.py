"""set_condition keeps lastTransitionTime while the status is unchanged and moves it on a change."""

from gptops.api.conditions import FALSE, TRUE, conditions_to_dicts, get_condition, is_true, set_condition


def test_new_condition_is_appended_with_time():
    out = set_condition([], "Ready", True, "RolloutComplete", "ok", observed_generation=3, now="T1")
    assert conditions_to_dicts(out) == [
        {"type": "Ready", "status": "True", "reason": "RolloutComplete", "message": "ok",
         "observedGeneration": 3, "lastTransitionTime": "T1"}
    ]


def test_same_status_keeps_transition_time_but_updates_reason():
    first = set_condition([], "Ready", TRUE, "A", now="T1")
    again = set_condition(first, "Ready", TRUE, "B", "new message", now="T2")
    cond = get_condition(again, "Ready")
    assert cond.last_transition_time == "T1"
    assert cond.reason == "B" and cond.message == "new message"


def test_changed_status_moves_transition_time():
    first = set_condition([], "Ready", TRUE, "A", now="T1")
    changed = set_condition(first, "Ready", FALSE, "B", now="T2")
    assert get_condition(changed, "Ready").last_transition_time == "T2"
    assert not is_true(changed, "Ready")


def test_other_conditions_and_order_are_kept_and_dicts_accepted():
    existing = [{"type": "Prepared", "status": "True", "reason": "JobSucceeded", "lastTransitionTime": "T0"},
                {"type": "Trained", "status": "Unknown", "reason": "JobRunning", "lastTransitionTime": "T0"}]
    out = set_condition(existing, "Prepared", True, "JobSucceeded", now="T9")
    assert [c.type for c in out] == ["Prepared", "Trained"]
    assert out[0].last_transition_time == "T0"
    assert is_true(out, "Prepared")
