"""When to renew a certificate and when to try again after a failure. Pure: no I/O, no clock."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """The next renewal of one certificate and why then."""

    at: dt.datetime
    reason: str


def planned_renewal(
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    renew_at: float,
    suggested: dt.datetime | None = None,
) -> Plan:
    """At ``renew_at`` of the lifetime, or earlier when the CA's renewal information (RFC 9773)
    suggests an earlier time: the CA knows of a revocation or a key rotation we do not."""
    lifetime = not_after - not_before
    by_lifetime = not_before + lifetime * renew_at
    fraction = f"{renew_at:.0%}" if round(renew_at, 4) != round(2 / 3, 4) else "two thirds"
    plan = Plan(by_lifetime, f"{fraction} of its lifetime has passed")
    if suggested is not None and suggested < by_lifetime:
        # A window that opens about when ours would (vouch's default is also two thirds) is not
        # the CA asking for anything: only a clearly earlier time is reported as its reason.
        asked = suggested < by_lifetime - lifetime / 100
        plan = Plan(
            suggested,
            "the CA's renewal information (RFC 9773) asks for it" if asked else plan.reason,
        )
    return plan


def retry_delay(
    failures: int,
    *,
    now: dt.datetime,
    not_after: dt.datetime | None,
    minimum: dt.timedelta,
    maximum: dt.timedelta,
    rng: random.Random,
) -> dt.timedelta:
    """Exponential backoff with jitter after ``failures`` failed attempts in a row.

    Never longer than a third of the time the current certificate has left (so that several tries
    fit before it expires), and never shorter than a second. The jitter (half to all of the delay)
    keeps a fleet of agents from retrying against a recovering CA in lockstep.
    """
    delay = min(minimum * 2 ** max(0, min(failures - 1, 30)), maximum)
    if not_after is not None and not_after > now:
        delay = min(delay, (not_after - now) / 3)
    delay = max(delay, dt.timedelta(seconds=1))
    jittered: dt.timedelta = delay * rng.uniform(0.5, 1.0)
    return jittered


def next_ari_check(
    retry_after: dt.datetime, *, now: dt.datetime, not_before: dt.datetime, not_after: dt.datetime
) -> dt.datetime:
    """When to ask for renewal information again: when the CA says (Retry-After), but at least
    eight times in a certificate's lifetime, so a short-lived certificate hears of a forced
    renewal in time; and not more often than every second."""
    lifetime = not_after - not_before
    at = min(retry_after, now + lifetime / 8)
    return max(at, now + dt.timedelta(seconds=1))


def ari_time(
    start: dt.datetime, end: dt.datetime, *, lifetime: dt.timedelta, rng: random.Random
) -> dt.datetime:
    """RFC 9773 4.2: a uniformly random time in the CA's suggested window, so that a fleet told
    to renew at once (a CA key rotation) spreads out. The spread is at most a twelfth of the
    lifetime, so a window that is long for a short-lived certificate (a one-minute "renew now"
    for a certificate of minutes) is still met early; renewing earlier within it is allowed."""
    spread = min(end - start, lifetime / 12)
    chosen: dt.datetime = start + spread * rng.random()
    return chosen
