from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.pipeline import JobBase, TriggerRule
from engine.semantics import Readiness, read_result, retry_delay, trigger
from engine.state import Outcome

S, F, K = Outcome.SUCCESS, Outcome.FAILURE, Outcome.SKIPPED
RUN, SKIP, UPSTREAM = Readiness.RUN, Readiness.SKIP, Readiness.UPSTREAM_FAILED


@pytest.mark.parametrize(
    ("rule", "outcomes", "expected"),
    [
        (TriggerRule.ALL_SUCCESS, [S, S], RUN),
        (TriggerRule.ALL_SUCCESS, [S, F], UPSTREAM),
        (TriggerRule.ALL_SUCCESS, [S, K], SKIP),
        (TriggerRule.ALL_SUCCESS, [F, K], UPSTREAM),
        (TriggerRule.ALL_FAILED, [F, F], RUN),
        (TriggerRule.ALL_FAILED, [F, S], SKIP),
        (TriggerRule.ALL_DONE, [F, K, S], RUN),
        (TriggerRule.ALL_SKIPPED, [K, K], RUN),
        (TriggerRule.ALL_SKIPPED, [K, S], SKIP),
        (TriggerRule.ONE_SUCCESS, [F, S], RUN),
        (TriggerRule.ONE_SUCCESS, [F, F], UPSTREAM),
        (TriggerRule.ONE_SUCCESS, [K, K], SKIP),
        (TriggerRule.ONE_FAILED, [S, F], RUN),
        (TriggerRule.ONE_FAILED, [S, S], SKIP),
        (TriggerRule.ONE_DONE, [K, F], RUN),
        (TriggerRule.ONE_DONE, [K, K], SKIP),
        (TriggerRule.NONE_FAILED, [S, K], RUN),
        (TriggerRule.NONE_FAILED, [S, F], UPSTREAM),
        (TriggerRule.NONE_SKIPPED, [S, F], RUN),
        (TriggerRule.NONE_SKIPPED, [S, K], SKIP),
        (TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, [S, K], RUN),
        (TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, [K, K], SKIP),
        (TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, [F, S], UPSTREAM),
        (TriggerRule.ALWAYS, [F, F], RUN),
    ],
)
def test_trigger_rules(rule, outcomes, expected):
    assert trigger(rule, outcomes) is expected


@given(st.sampled_from(list(TriggerRule)))
def test_a_job_without_parents_always_runs(rule):
    assert trigger(rule, []) is RUN


@given(st.sampled_from(list(TriggerRule)), st.lists(st.sampled_from([S, F, K]), min_size=1))
def test_trigger_ignores_parent_order(rule, outcomes):
    assert trigger(rule, outcomes) is trigger(rule, list(reversed(outcomes)))


def job(**fields) -> JobBase:
    return JobBase.model_validate({"id": "j", **fields})


def test_retry_delays_back_off_and_cap():
    backoff = job(retries=4, retry_delay=10, retry_backoff=2.0, retry_max_delay=50)
    assert [retry_delay(backoff, n, 0.5) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 50, None]


def test_full_jitter_scales_the_delay():
    jitter = job(retries=1, retry_delay=30, retry_jitter="full")
    assert retry_delay(jitter, 1, 0.25) == 7.5
    assert retry_delay(job(retries=1, retry_delay=30), 1, 0.25) == 30


def test_no_retries_means_no_delay():
    assert retry_delay(job(), 1, 0.0) is None


def test_lambda_responses_yield_the_parsed_body():
    ok = read_result({"statusCode": 200, "body": '{"train_samples": 4000}'})
    assert ok.succeeded and ok.output == {"train_samples": 4000}
    bad = read_result({"statusCode": 503, "body": "busy", "headers": {}})
    assert not bad.succeeded and bad.error == "statusCode 503: busy"
    text = read_result({"statusCode": 200, "body": "plain text"})
    assert text.output == "plain text"


def test_other_results_are_the_output_as_is():
    assert read_result({"statusCode": 500, "detail": "x"}).succeeded  # not a Lambda response
    assert read_result([1, 2]).output == [1, 2]
    assert read_result(None).output is None
