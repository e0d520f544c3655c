"""Generate realistic labelled event archives for the built-in specs, partitioned by day.

    python -m pipelines.generate --spec fraud --days 19 --out benchmarks/data/fraud

Writes ``OUT/dt=YYYY-MM-DD/events.jsonl`` (``events.jsonl.gz`` with ``--compress``): one JSON
object per line, UTF-8, lines separated by ``\\n``, roughly in event-time order. A share of the
lines (``--broken_share``) deliberately breaks the event contract (``events.md``) in one of many
named ways. ``OUT/_generated.json`` is the manifest: per day, the file, its line count, how many
lines are valid, how many with the label set, and how many broken lines of each kind.

Same flags and seed give byte-identical files. Each day draws from its own random stream, so
``--days 14`` writes the same fraud files as the first 14 days of ``--days 19``.

Drift for monitoring tests: ``--drift_day 2026-03-10 --drift_factor 3`` multiplies every number
field (fraud and offers: ``amount``; sensor: the four readings) of that day's events by 3; every other day is
written exactly as without it. The manifest records it under ``drift``.

Specs:

* ``fraud``: card transactions from a fixed card and merchant population with a daily rhythm;
  fraud (label ``is_fraud``) comes in short bursts on compromised cards, mostly online or at
  ATMs, often abroad, in risky categories, at night and for large amounts, yet not always.
* ``sensor``: telemetry of 30 machines every 5 minutes, each in one of three operating regimes
  (written as the extra field ``regime``); before a failure, vibration and temperature drift
  upward for 24 hours (label ``failure``).
* ``offers``: 4,000 shop customers viewing, carting and buying in 8 categories; the label
  ``next_offer`` is the category the customer buys next (see ``OffersModel``).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import gzip
import pathlib
import sys
import time

import numpy as np
import orjson

from pipelines import cli

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR
MIB = 1024 * 1024
MANIFEST_NAME = "_generated.json"


# --------------------------------------------------------------------------------------------
# fraud: card transactions
# --------------------------------------------------------------------------------------------

# code, alpha-3, currency, currency units per USD, share of cards at home here,
# weight as a travel destination, weight as the origin of fraud abroad.
COUNTRY_TABLE = (
    ("US", "USA", "USD", 1.0, 0.40, 0.14, 0.06),
    ("GB", "GBR", "GBP", 0.79, 0.15, 0.10, 0.05),
    ("DE", "DEU", "EUR", 0.92, 0.12, 0.06, 0.03),
    ("FR", "FRA", "EUR", 0.92, 0.10, 0.12, 0.03),
    ("ES", "ESP", "EUR", 0.92, 0.08, 0.14, 0.03),
    ("IT", "ITA", "EUR", 0.92, 0.06, 0.12, 0.02),
    ("NL", "NLD", "EUR", 0.92, 0.04, 0.04, 0.03),
    ("CA", "CAN", "CAD", 1.36, 0.05, 0.05, 0.03),
    ("MX", "MEX", "MXN", 17.0, 0.0, 0.08, 0.07),
    ("JP", "JPN", "JPY", 150.0, 0.0, 0.05, 0.02),
    ("TH", "THA", "THB", 36.0, 0.0, 0.06, 0.06),
    ("AE", "ARE", "AED", 3.67, 0.0, 0.04, 0.05),
    ("BR", "BRA", "BRL", 5.0, 0.0, 0.015, 0.12),
    ("NG", "NGA", "NGN", 1500.0, 0.0, 0.002, 0.12),
    ("RO", "ROU", "RON", 4.6, 0.0, 0.005, 0.10),
    ("CN", "CHN", "CNY", 7.2, 0.0, 0.02, 0.07),
    ("IN", "IND", "INR", 83.0, 0.0, 0.01, 0.11),
)
COUNTRY_CODES = np.array([row[0] for row in COUNTRY_TABLE])
COUNTRY_ALPHA3 = {row[0]: row[1] for row in COUNTRY_TABLE}
COUNTRY_CURRENCY = np.array([row[2] for row in COUNTRY_TABLE])
UNITS_PER_USD = np.array([row[3] for row in COUNTRY_TABLE])
# Currencies without minor units are rounded to whole units.
CURRENCY_DECIMALS = np.array([0 if row[2] == "JPY" else 2 for row in COUNTRY_TABLE])


def _normalised(weights) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    return weights / weights.sum()


HOME_COUNTRY_P = _normalised([row[4] for row in COUNTRY_TABLE])
TRAVEL_COUNTRY_P = _normalised([row[5] for row in COUNTRY_TABLE])
FRAUD_COUNTRY_P = _normalised([row[6] for row in COUNTRY_TABLE])

CHANNELS = np.array(["pos", "online", "atm"])
POS, ONLINE, ATM = 0, 1, 2

# name, weight at a point of sale, weight online, weight in fraud (pos/online),
# amount relative to the card's typical spend, log-normal spread of that amount.
CATEGORY_TABLE = (
    ("grocery", 0.22, 0.04, 0.01, 1.0, 0.6),
    ("restaurant", 0.16, 0.03, 0.01, 0.8, 0.5),
    ("fuel", 0.10, 0.00, 0.01, 1.1, 0.4),
    ("pharmacy", 0.05, 0.01, 0.00, 0.6, 0.6),
    ("clothing", 0.07, 0.10, 0.05, 1.6, 0.7),
    ("transport", 0.06, 0.04, 0.01, 0.5, 0.6),
    ("entertainment", 0.04, 0.07, 0.02, 0.9, 0.6),
    ("home_improvement", 0.03, 0.02, 0.01, 2.0, 0.8),
    ("health", 0.03, 0.01, 0.00, 1.5, 0.8),
    ("utilities", 0.00, 0.07, 0.00, 2.0, 0.5),
    ("telecom", 0.01, 0.07, 0.01, 1.2, 0.4),
    ("digital_goods", 0.00, 0.16, 0.10, 0.4, 0.8),
    ("travel", 0.01, 0.06, 0.04, 6.0, 0.7),
    ("airline", 0.00, 0.05, 0.03, 8.0, 0.6),
    ("hotel", 0.02, 0.04, 0.01, 5.0, 0.6),
    ("electronics", 0.03, 0.08, 0.30, 4.0, 0.9),
    ("jewelry", 0.01, 0.01, 0.13, 5.0, 0.9),
    ("gift_cards", 0.02, 0.03, 0.14, 1.5, 0.5),
    ("crypto", 0.00, 0.01, 0.12, 3.0, 1.0),
    ("cash_withdrawal", 0.0, 0.0, 0.0, 2.5, 0.5),  # ATM only
)
CATEGORY_NAMES = np.array([row[0] for row in CATEGORY_TABLE])
CASH_WITHDRAWAL = len(CATEGORY_TABLE) - 1
DIGITAL_GOODS = int(np.flatnonzero(CATEGORY_NAMES == "digital_goods")[0])
POS_CATEGORY_P = _normalised([row[1] for row in CATEGORY_TABLE])
ONLINE_CATEGORY_P = _normalised([row[2] for row in CATEGORY_TABLE])
FRAUD_CATEGORY_P = _normalised([row[3] for row in CATEGORY_TABLE])
CATEGORY_AMOUNT = np.array([row[4] for row in CATEGORY_TABLE])
CATEGORY_SPREAD = np.array([row[5] for row in CATEGORY_TABLE])

# Transactions per UTC hour of day: quiet at night, busy at noon and in the evening.
LEGIT_HOUR_P = _normalised(
    [0.8, 0.5, 0.3, 0.25, 0.3, 0.6, 1.5, 3.0, 4.5, 5.0, 5.5, 6.0,
     7.0, 6.5, 6.0, 6.0, 6.2, 6.8, 7.0, 6.5, 5.5, 4.2, 2.8, 1.6]
)
# Fraudsters are active around the clock, most of all while the card holder sleeps.
FRAUD_HOUR_P = _normalised(0.5 * LEGIT_HOUR_P + 0.5 * _normalised(
    [3, 3, 3, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3]))

LEGIT_CHANNEL_P = np.array([0.60, 0.32, 0.08])
FRAUD_CHANNEL_P = np.array([0.10, 0.62, 0.28])

N_CARDS = 5_000
N_MERCHANTS = 2_000
FRAUD_EVENT_SHARE = 0.008
FRAUD_EPISODE_SIZES = (2, 6)  # inclusive
# Share of fraud episodes that look like the card holder's own spending (home, normal amounts).
STEALTHY_EPISODE_SHARE = 0.05
FRAUD_ABROAD_SHARE = 0.8
FRAUD_AMOUNT_FACTOR = 5.0  # median fraud amount over the card's usual amount
STEALTHY_AMOUNT_FACTOR = 2.0
CARD_TESTING_SHARE = 0.2  # online episodes that start with a tiny test charge
# Legit transactions that are unusually large for the card (a holiday, a new laptop).
LEGIT_SPLURGE_SHARE = 0.01
LEGIT_SPLURGE_CATEGORY_P = _normalised(
    [0.4 if name in ("travel", "airline", "hotel", "electronics", "jewelry") else 0.0
     for name in CATEGORY_NAMES])
# Abroad, a payment is sometimes charged in the card's home currency (dynamic conversion).
HOME_CURRENCY_ABROAD_SHARE = 0.25


class FraudModel:
    """A fixed population of cards and merchants that draws days of labelled transactions.

    Each card has a home country, a typical spend (log-normal, in USD), an activity level and
    two countries its holder travels to. Each merchant has a country and a category.
    """

    label = "is_fraud"
    id_prefix = "tx"
    default_events_per_day = 10_000

    def __init__(self, rng: np.random.Generator, days: int) -> None:
        """Draws the population; it does not depend on the number of days."""
        n_countries = len(COUNTRY_TABLE)
        self.card_ids = np.array([f"card-{i:05d}" for i in range(N_CARDS)])
        self.card_home = rng.choice(n_countries, N_CARDS, p=HOME_COUNTRY_P)
        self.card_spend_usd = rng.lognormal(np.log(35.0), 0.6, N_CARDS)
        self.card_activity = _normalised(rng.gamma(2.0, 1.0, N_CARDS))
        self.card_abroad_share = rng.beta(1.0, 20.0, N_CARDS)
        first_destination = self._countries_other_than(rng, [self.card_home])
        second_destination = self._countries_other_than(rng, [self.card_home, first_destination])
        self.card_destinations = np.stack([first_destination, second_destination], axis=1)
        self._init_merchants(rng)

    def _init_merchants(self, rng: np.random.Generator) -> None:
        """Merchants, sorted by (country, category), every such pair having at least one."""
        n_countries, n_categories = len(COUNTRY_TABLE), len(CATEGORY_TABLE)
        every_pair = np.arange(n_countries * n_categories)
        pair_p = np.outer(_normalised(HOME_COUNTRY_P + TRAVEL_COUNTRY_P),
                          _normalised(POS_CATEGORY_P + ONLINE_CATEGORY_P + 0.01)).ravel()
        extra = rng.choice(every_pair.size, N_MERCHANTS - every_pair.size, p=_normalised(pair_p))
        merchant_pair = np.sort(np.concatenate([every_pair, extra]))
        self.merchant_ids = rng.permutation(
            np.array([f"mch-{i:05d}" for i in range(N_MERCHANTS)]))
        self.pair_first_merchant = np.searchsorted(merchant_pair, every_pair)
        self.pair_merchant_count = np.bincount(merchant_pair, minlength=every_pair.size)

    @staticmethod
    def _countries_other_than(rng: np.random.Generator, excluded: list[np.ndarray],
                              p: np.ndarray = TRAVEL_COUNTRY_P) -> np.ndarray:
        """One country per row drawn with weights p, differing from every array in excluded."""
        countries = rng.choice(len(p), excluded[0].size, p=p)
        for _ in range(100):
            clash = np.zeros(countries.size, dtype=bool)
            for other in excluded:
                clash |= countries == other
            if not clash.any():
                break
            countries[clash] = rng.choice(len(p), int(clash.sum()), p=p)
        return countries

    def day(self, rng: np.random.Generator, day_index: int, n_events: int):
        """Draws one day: (milliseconds after midnight UTC, columns of the events, unsorted).
        Days are independent given the population, so day_index is not needed."""
        n_episodes = rng.poisson(n_events * FRAUD_EVENT_SHARE / np.mean(FRAUD_EPISODE_SIZES))
        fraud = self._fraud_episodes(rng, n_episodes, max_events=n_events // 2)
        legit = self._legit(rng, n_events - fraud["offset_ms"].size)
        both = {key: np.concatenate([legit[key], fraud[key]]) for key in legit}
        return both.pop("offset_ms"), self._columns(rng, **both)

    def _legit(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Transactions of card holders: mostly at home, by day, at their usual amounts."""
        card = rng.choice(N_CARDS, n, p=self.card_activity)
        abroad = rng.random(n) < self.card_abroad_share[card]
        destination = self.card_destinations[card, rng.integers(0, 2, n)]
        country = np.where(abroad, destination, self.card_home[card])
        channel = rng.choice(3, n, p=LEGIT_CHANNEL_P)
        category = self._categories(rng, channel, ONLINE_CATEGORY_P)
        amount_factor = rng.lognormal(0.0, CATEGORY_SPREAD[category])
        splurge = (rng.random(n) < LEGIT_SPLURGE_SHARE) & (channel != ATM)
        category[splurge] = rng.choice(len(CATEGORY_TABLE), int(splurge.sum()),
                                       p=LEGIT_SPLURGE_CATEGORY_P)
        amount_factor[splurge] *= rng.lognormal(np.log(3.0), 0.5, int(splurge.sum()))
        offset_ms = self._offsets_in_hours(rng, rng.choice(24, n, p=LEGIT_HOUR_P))
        return dict(offset_ms=offset_ms, card=card, country=country, channel=channel,
                    category=category, amount_factor=amount_factor, is_fraud=np.zeros(n, int))

    def _fraud_episodes(self, rng: np.random.Generator, n_episodes: int,
                        max_events: int) -> dict[str, np.ndarray]:
        """Bursts of 2-6 fraudulent transactions on compromised cards within one or two hours.

        Most episodes are aggressive (abroad in a country new to the card, online or ATM, risky
        categories, night, large amounts); a stealthy share looks like the holder's own spending.
        """
        low, high = FRAUD_EPISODE_SIZES
        size = rng.integers(low, high + 1, n_episodes)
        n_episodes = int(np.searchsorted(np.cumsum(size), max_events, side="right"))
        size = size[:n_episodes]
        card = rng.choice(N_CARDS, n_episodes, p=self.card_activity)
        stealthy = rng.random(n_episodes) < STEALTHY_EPISODE_SHARE
        home = self.card_home[card]
        new_country = self._countries_other_than(
            rng, [home, *self.card_destinations[card].T], p=FRAUD_COUNTRY_P)
        abroad = ~stealthy & (rng.random(n_episodes) < FRAUD_ABROAD_SHARE)
        country = np.where(abroad, new_country, home)
        channel = np.where(stealthy, rng.choice(3, n_episodes, p=LEGIT_CHANNEL_P),
                           rng.choice(3, n_episodes, p=FRAUD_CHANNEL_P))
        hour = np.where(stealthy, rng.choice(24, n_episodes, p=LEGIT_HOUR_P),
                        rng.choice(24, n_episodes, p=FRAUD_HOUR_P))
        duration_ms = rng.integers(15 * 60_000, 120 * 60_000, n_episodes)
        start_ms = np.minimum(self._offsets_in_hours(rng, hour), MS_PER_DAY - 1 - duration_ms)

        episode = np.repeat(np.arange(n_episodes), size)
        n = episode.size
        first_of_episode = np.arange(n) == np.repeat(np.cumsum(size) - size, size)
        offset_ms = start_ms[episode] + np.where(
            first_of_episode, 0, rng.integers(0, duration_ms[episode] + 1))
        event_channel = channel[episode]
        event_stealthy = stealthy[episode]
        category = np.where(
            event_stealthy, self._categories(rng, event_channel, ONLINE_CATEGORY_P),
            self._categories(rng, event_channel, FRAUD_CATEGORY_P, pos_p=FRAUD_CATEGORY_P))
        amount_factor = rng.lognormal(0.0, CATEGORY_SPREAD[category]) * np.where(
            event_stealthy, rng.lognormal(np.log(STEALTHY_AMOUNT_FACTOR), 0.4, n),
            rng.lognormal(np.log(FRAUD_AMOUNT_FACTOR), 0.5, n))
        card_test = (first_of_episode & ~event_stealthy & (event_channel == ONLINE)
                     & (rng.random(n) < CARD_TESTING_SHARE))
        category[card_test] = DIGITAL_GOODS
        # A tiny charge (0.5-3 USD) whatever the card's usual spend.
        amount_factor[card_test] = rng.uniform(0.5, 3.0, int(card_test.sum())) / (
            self.card_spend_usd[card[episode][card_test]] * CATEGORY_AMOUNT[DIGITAL_GOODS])
        return dict(offset_ms=offset_ms, card=card[episode], country=country[episode],
                    channel=event_channel, category=category, amount_factor=amount_factor,
                    is_fraud=np.ones(n, int))

    @staticmethod
    def _categories(rng: np.random.Generator, channel: np.ndarray, online_p: np.ndarray,
                    pos_p: np.ndarray = POS_CATEGORY_P) -> np.ndarray:
        """A merchant category per transaction given its channel (ATMs only withdraw cash)."""
        category = np.full(channel.size, CASH_WITHDRAWAL)
        for channel_value, p in ((POS, pos_p), (ONLINE, online_p)):
            mask = channel == channel_value
            category[mask] = rng.choice(len(p), int(mask.sum()), p=p)
        return category

    @staticmethod
    def _offsets_in_hours(rng: np.random.Generator, hour: np.ndarray) -> np.ndarray:
        """A uniformly random millisecond within each given hour of the day."""
        return hour * MS_PER_HOUR + rng.integers(0, MS_PER_HOUR, hour.size)

    def _columns(self, rng: np.random.Generator, card, country, channel, category,
                 amount_factor, is_fraud) -> dict[str, list]:
        """The event fields (without id and time) as lists of plain Python values."""
        n = card.size
        abroad = country != self.card_home[card]
        home_currency_abroad = abroad & (rng.random(n) < HOME_CURRENCY_ABROAD_SHARE)
        currency_country = np.where(home_currency_abroad, self.card_home[card], country)
        usd = self.card_spend_usd[card] * CATEGORY_AMOUNT[category] * amount_factor
        amount = self._local_amount(usd, currency_country, cash=channel == ATM)
        pair = country * len(CATEGORY_TABLE) + category
        merchant = (self.pair_first_merchant[pair]
                    + (rng.random(n) * self.pair_merchant_count[pair]).astype(int))
        return {
            "card_id": self.card_ids[card].tolist(),
            "merchant_id": self.merchant_ids[merchant].tolist(),
            "merchant_category": CATEGORY_NAMES[category].tolist(),
            "amount": amount.tolist(),
            "currency": COUNTRY_CURRENCY[currency_country].tolist(),
            "country": COUNTRY_CODES[country].tolist(),
            "channel": CHANNELS[channel].tolist(),
            "is_fraud": is_fraud.tolist(),
        }

    @staticmethod
    def _local_amount(usd: np.ndarray, currency_country: np.ndarray,
                      cash: np.ndarray) -> np.ndarray:
        """USD amounts in the local currency, rounded to its minor unit; ATM cash to round
        notes (10 USD, 1000 JPY, ...). Never below one minor unit."""
        local = usd * UNITS_PER_USD[currency_country]
        # Dividing whole minor units by 100 gives exactly the double that "12.35" parses to.
        minor_units_per_unit = 10.0 ** CURRENCY_DECIMALS[currency_country]
        card_amount = np.maximum(np.round(local * minor_units_per_unit), 1) / minor_units_per_unit
        note = 10.0 ** np.maximum(1, np.floor(np.log10(20 * UNITS_PER_USD[currency_country])))
        cash_amount = np.maximum(np.round(local / note), 1) * note
        return np.where(cash, cash_amount, card_amount)


# --------------------------------------------------------------------------------------------
# sensor: machine telemetry
# --------------------------------------------------------------------------------------------

N_MACHINES = 30
REGIMES = np.array(["idle", "normal", "heavy"])
SENSOR_FIELDS = ("temperature_c", "vibration_mm_s", "pressure_bar", "rpm")
# Per regime, the mean and the noise of (temperature_c, vibration_mm_s, pressure_bar, rpm).
REGIME_MEAN = np.array([[40.0, 1.0, 2.0, 900.0], [65.0, 2.5, 5.0, 1800.0],
                        [85.0, 4.5, 8.0, 3000.0]])
REGIME_NOISE = np.array([[1.5, 0.25, 0.15, 30.0], [2.0, 0.45, 0.25, 50.0],
                         [2.5, 0.7, 0.35, 80.0]])
# How much one machine's own level differs from its fleet's (absolute; rpm relative).
MACHINE_BIAS_SD = np.array([2.0, 0.15, 0.1, 0.02])
READING_DECIMALS = (2, 3, 3, 1)
# At the moment of failure, added to (temperature_c, vibration_mm_s); growing from zero 24 h before.
FAILURE_DRIFT = np.array([20.0, 8.0])
FAILURE_HORIZON_S = 24 * 3600
MEAN_REGIME_RUN_H = 5.0
FAILURES_PER_DAY = 0.2
MIN_FAILURES = 2
READING_JITTER_MS = 3_000


class SensorModel:
    """A fleet of machines, their regime timelines and failures over the whole archive,
    drawing days of telemetry with the regime and the failure label."""

    label = "failure"
    id_prefix = "rd"
    default_events_per_day = N_MACHINES * 24 * 12  # one reading every 5 minutes

    def __init__(self, rng: np.random.Generator, days: int) -> None:
        self.machine_ids = np.array([f"m-{i + 1:03d}" for i in range(N_MACHINES)])
        self.bias = rng.normal(0.0, MACHINE_BIAS_SD, (N_MACHINES, len(SENSOR_FIELDS)))
        self.bias[:, 3] = 1.0 + self.bias[:, 3]  # rpm bias is a factor
        self._init_regime_runs(rng, days)
        n_failures = min(N_MACHINES, max(MIN_FAILURES, round(FAILURES_PER_DAY * days)))
        self.failure_machine = rng.choice(N_MACHINES, n_failures, replace=False)
        self.failure_time_s = rng.uniform(12 * 3600, days * 86400, n_failures)

    def _init_regime_runs(self, rng: np.random.Generator, days: int) -> None:
        """Per machine, the start times (s after the archive starts) and regimes of runs of
        hours, each regime different from the one before."""
        max_runs = int(days * 24 / 0.75) + 2  # runs last at least 45 minutes
        run_s = np.clip(rng.exponential(MEAN_REGIME_RUN_H * 3600, (N_MACHINES, max_runs)),
                        45 * 60, 12 * 3600)
        self.run_start_s = np.cumsum(run_s, axis=1) - run_s
        first = rng.integers(0, 3, (N_MACHINES, 1))
        steps = rng.integers(1, 3, (N_MACHINES, max_runs - 1))
        self.run_regime = np.cumsum(np.concatenate([first, steps], axis=1), axis=1) % 3

    def day(self, rng: np.random.Generator, day_index: int, n_events: int):
        """Draws one day: (milliseconds after midnight UTC, columns of the readings)."""
        per_machine = np.full(N_MACHINES, n_events // N_MACHINES)
        per_machine[: n_events % N_MACHINES] += 1
        machine = np.repeat(np.arange(N_MACHINES), per_machine)
        slot = np.arange(n_events) - np.repeat(np.cumsum(per_machine) - per_machine, per_machine)
        interval_ms = MS_PER_DAY / per_machine[machine]
        # Machines report on a schedule shifted by their number, with a little clock jitter.
        scheduled_ms = (slot + (machine + 0.5) / N_MACHINES) * interval_ms
        offset_ms = np.clip(scheduled_ms + rng.normal(0, READING_JITTER_MS, n_events),
                            0, MS_PER_DAY - 1).astype(np.int64)
        archive_s = day_index * 86400 + offset_ms / 1000
        regime = self._regime_at(machine, archive_s)
        before_failure, drift_progress = self._failure_window(machine, archive_s)

        readings = (REGIME_MEAN[regime] + rng.normal(0, 1, (n_events, 4)) * REGIME_NOISE[regime])
        readings[:, :3] += self.bias[machine, :3]
        readings[:, 3] *= self.bias[machine, 3]
        readings[:, :2] += FAILURE_DRIFT * drift_progress[:, None] ** 2
        readings[:, 1:] = np.maximum(readings[:, 1:], 0.0)
        columns = {"machine_id": self.machine_ids[machine].tolist()}
        for i, field in enumerate(SENSOR_FIELDS):
            columns[field] = np.round(readings[:, i], READING_DECIMALS[i]).tolist()
        columns["regime"] = REGIMES[regime].tolist()
        columns["failure"] = before_failure.astype(int).tolist()
        return offset_ms, columns

    def _regime_at(self, machine: np.ndarray, archive_s: np.ndarray) -> np.ndarray:
        """The regime index of each machine at each time."""
        regime = np.empty(machine.size, dtype=int)
        for m in range(N_MACHINES):
            mask = machine == m
            run = np.searchsorted(self.run_start_s[m], archive_s[mask], side="right") - 1
            regime[mask] = self.run_regime[m, run]
        return regime

    def _failure_window(self, machine: np.ndarray,
                        archive_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether each reading falls in the 24 h before a failure of its machine, and how far
        into that window (0 at its start and outside, 1 at the failure)."""
        within_any = np.zeros(machine.size, dtype=bool)
        progress = np.zeros(machine.size)
        for failed, failure_s in zip(self.failure_machine, self.failure_time_s):
            until_failure = failure_s - archive_s
            within = (machine == failed) & (until_failure > 0) & (until_failure <= FAILURE_HORIZON_S)
            within_any |= within
            progress[within] = np.maximum(progress[within],
                                          1.0 - until_failure[within] / FAILURE_HORIZON_S)
        return within_any, progress


# --------------------------------------------------------------------------------------------
# offers: customers browsing and buying across product categories
# --------------------------------------------------------------------------------------------

# The offers a retailer can make, one per category, with the category's share of purchases
# across all customers and its median price in USD.
OFFER_TABLE = (
    ("groceries", 0.24, 35.0),
    ("fashion", 0.17, 60.0),
    ("home", 0.13, 90.0),
    ("electronics", 0.11, 250.0),
    ("beauty", 0.10, 30.0),
    ("sports", 0.09, 70.0),
    ("books", 0.09, 18.0),
    ("travel", 0.07, 600.0),
)
OFFERS = np.array([row[0] for row in OFFER_TABLE])
OFFER_POPULARITY = _normalised([row[1] for row in OFFER_TABLE])
OFFER_PRICE = np.array([row[2] for row in OFFER_TABLE])
N_CUSTOMERS = 4_000
N_SEGMENTS = 6
REGIONS = np.array(["north", "south", "east", "west", "central"])
AGE_BANDS = np.array(["18-24", "25-34", "35-44", "45-54", "55-64", "65+"])
SHOP_CHANNELS = np.array(["web", "app", "store"])
SHOP_ACTIONS = np.array(["view", "cart", "purchase"])
SHOP_HOUR_P = _normalised(
    [0.6, 0.3, 0.2, 0.2, 0.2, 0.4, 1.0, 2.0, 3.0, 3.5, 4.0, 4.5,
     5.0, 4.8, 4.5, 4.5, 4.8, 5.5, 6.5, 7.5, 8.0, 7.0, 4.5, 2.0])
PURCHASE_SHARE, CART_SHARE = 0.22, 0.13  # of a customer's events; the rest are views
VIEW_OF_INTENT_SHARE = 0.5  # a view shows the category the customer will buy next; otherwise a favourite or any
COMPLEMENT_SHARE = 0.3  # after a purchase, the next intent follows from what was bought


class OffersModel:
    """Customers who browse and buy, each with favourite categories, for next-best-offer scoring.

    Each customer belongs to one of a few segments that share tastes, age bands and regions, and
    has preferences of their own drawn around the segment's. At any time a customer intends to buy
    one category next (the label ``next_offer``): drawn from their preferences, or after a purchase
    often from what complements it (books after travel, ...). Their views and cart additions show
    that intent half the time and their favourites otherwise; a purchase buys it, and a new intent is
    drawn. So the next purchase can be read from the current event, the customer's recent events and
    their long-run favourites, none of them certain. Intents carry over from day to day.
    """

    label = "next_offer"
    id_prefix = "ev"
    default_events_per_day = 10_000

    def __init__(self, rng: np.random.Generator, days: int) -> None:
        k = len(OFFERS)
        segment_taste = rng.dirichlet(np.full(k, 0.6), N_SEGMENTS) * 0.7 + OFFER_POPULARITY * 0.3
        self.segment = rng.choice(N_SEGMENTS, N_CUSTOMERS)
        self.preference = np.array([rng.dirichlet(25.0 * segment_taste[s] + 0.2) for s in self.segment])
        self.region = (self.segment + rng.choice([0, 0, 0, 1, 2], N_CUSTOMERS)) % len(REGIONS)
        self.age_band = np.clip(self.segment + rng.integers(-1, 2, N_CUSTOMERS), 0, len(AGE_BANDS) - 1)
        self.activity = _normalised(rng.lognormal(0.0, 0.8, N_CUSTOMERS))
        self.spend = rng.lognormal(0.0, 0.35, N_CUSTOMERS)  # relative to a category's median price
        # What each category's buyers go on to want: a shifted and mixed popularity.
        self.complement = rng.dirichlet(np.full(k, 0.5), k)
        self.intent = self._draw_intent(rng, np.arange(N_CUSTOMERS), bought=None)

    def _draw_intent(self, rng: np.random.Generator, customers: np.ndarray, bought) -> np.ndarray:
        weights = self.preference[customers]
        if bought is not None:
            weights = np.where((rng.random(customers.size) < COMPLEMENT_SHARE)[:, None],
                               self.complement[bought], weights)
        cumulative = np.cumsum(weights, axis=1)
        draws = rng.random(customers.size)[:, None] * cumulative[:, -1:]
        return np.minimum((draws > cumulative).sum(axis=1), len(OFFERS) - 1)

    def day(self, rng: np.random.Generator, day_index: int, n_events: int):
        """Draws one day: (milliseconds after midnight UTC, columns of the events), in time order."""
        offset_ms = np.sort(self._offsets(rng, n_events))
        customer = rng.choice(N_CUSTOMERS, n_events, p=self.activity)
        action = rng.choice(3, n_events, p=[1 - PURCHASE_SHARE - CART_SHARE, CART_SHARE, PURCHASE_SHARE])
        shows_intent = rng.random(n_events) < VIEW_OF_INTENT_SHARE
        favourite = self._draw_intent(rng, customer, bought=None)
        category, label = np.empty(n_events, int), np.empty(n_events, int)
        for i in range(n_events):  # in time order: a purchase changes what the customer wants next
            c = customer[i]
            category[i] = self.intent[c] if action[i] == 2 or shows_intent[i] else favourite[i]
            if action[i] == 2:
                self.intent[c] = self._draw_intent(rng, np.array([c]), bought=np.array([category[i]]))[0]
            label[i] = self.intent[c]
        price = OFFER_PRICE[category] * self.spend[customer] * rng.lognormal(0.0, 0.5, n_events)
        channel_p = np.array([[0.45, 0.45, 0.10], [0.35, 0.35, 0.30]])[(self.age_band[customer] >= 3).astype(int)]
        channel = (rng.random(n_events)[:, None] > np.cumsum(channel_p, axis=1)).sum(axis=1)
        columns = {"customer_id": [f"cu-{c + 1:05d}" for c in customer.tolist()],
                   "action": SHOP_ACTIONS[action].tolist(), "category": OFFERS[category].tolist(),
                   "amount": np.round(np.maximum(price, 0.5), 2).tolist(), "channel": SHOP_CHANNELS[channel].tolist(),
                   "region": REGIONS[self.region[customer]].tolist(),
                   "age_band": AGE_BANDS[self.age_band[customer]].tolist(),
                   "next_offer": OFFERS[label].tolist()}
        return offset_ms, columns

    @staticmethod
    def _offsets(rng: np.random.Generator, n: int) -> np.ndarray:
        hours = rng.choice(24, n, p=SHOP_HOUR_P)
        return (hours * MS_PER_HOUR + rng.integers(0, MS_PER_HOUR, n)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# broken lines
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ContractFacts:
    """What the contract of one spec requires, as far as breaking it needs to know."""

    required: tuple[str, ...]
    numbers: tuple[str, ...]
    bounded: tuple[str, ...]  # numbers that must be > 0 (fraud) or >= 0 (sensor)
    bound_kind: str  # the name of the kind that breaks that bound
    kinds: tuple[str, ...]  # every kind of broken line of the spec


COMMON_KINDS = ("not_json", "not_object", "missing_field", "null_field", "wrong_type", "nan",
                "infinity", "bad_time", "time_without_zone", "empty_id", "invalid_utf8",
                "oversized", "empty_line")
CONTRACTS = {
    "fraud": ContractFacts(
        required=("event_id", "event_time", "card_id", "merchant_id", "merchant_category",
                  "amount", "currency", "country", "channel"),
        numbers=("amount",), bounded=("amount",), bound_kind="non_positive_amount",
        kinds=COMMON_KINDS + ("non_positive_amount", "bad_enum", "bad_code")),
    "sensor": ContractFacts(
        required=("event_id", "event_time", "machine_id") + SENSOR_FIELDS,
        numbers=SENSOR_FIELDS, bounded=SENSOR_FIELDS[1:], bound_kind="negative_reading",
        kinds=COMMON_KINDS + ("negative_reading",)),
    "offers": ContractFacts(
        required=("event_id", "event_time", "customer_id", "action", "category", "amount", "channel", "region",
                  "age_band"),
        numbers=("amount",), bounded=("amount",), bound_kind="non_positive_amount",
        kinds=COMMON_KINDS + ("non_positive_amount", "bad_enum", "unknown_offer")),
}
OVERSIZED = "oversized"
# Just over the 1 MiB limit whichever way it is counted, without making archives huge.
OVERSIZED_PADDING = MIB + 64 * 1024
_NUMBER_TOKEN = "__number_token__"


def plan_broken_kinds(kinds: tuple[str, ...], counts_per_day: list[int]) -> list[list[str]]:
    """The kinds of the broken lines of each day, cycling through all kinds across the days
    so that every kind appears once there are enough broken lines; at most one oversized line
    per day."""
    plans, cursor = [], 0
    for count in counts_per_day:
        day_kinds = []
        for _ in range(count):
            kind = kinds[cursor % len(kinds)]
            cursor += 1
            if kind == OVERSIZED and OVERSIZED in day_kinds:
                kind = kinds[cursor % len(kinds)]
                cursor += 1
            day_kinds.append(kind)
        plans.append(day_kinds)
    return plans


def break_event(kind: str, event: dict, facts: ContractFacts, rng: np.random.Generator) -> bytes:
    """One line (without newline) that breaks the contract in the given way and otherwise
    looks like the given valid event."""
    event = dict(event)

    def pick(options):
        return options[rng.integers(len(options))]

    if kind == "empty_line":
        return b""
    if kind == "not_json":
        line = orjson.dumps(event)
        return line[: int(len(line) * rng.uniform(0.2, 0.9))]  # truncated mid-object
    if kind == "not_object":
        return orjson.dumps(list(event.values())) if rng.random() < 0.5 else b"42"
    if kind == "invalid_utf8":
        line = orjson.dumps(event)
        at = line.index(b'"event_id":"') + len(b'"event_id":"')
        return line[:at] + b"\xff\xfe" + line[at:]
    if kind == OVERSIZED:
        event["padding"] = "x" * OVERSIZED_PADDING
        return orjson.dumps(event)

    if kind == "missing_field":
        del event[pick(facts.required)]
    elif kind == "null_field":
        event[pick(facts.required)] = None
    elif kind == "wrong_type":
        # Half the time a number sent as a string ("12.50"), the commonest case in practice.
        field = pick(facts.numbers) if rng.random() < 0.5 else pick(facts.required)
        value = event[field]
        event[field] = (f"{value:.2f}" if isinstance(value, float)
                        else int("".join(filter(str.isdigit, value)) or 0))
    elif kind in ("nan", "infinity"):
        event[pick(facts.numbers)] = _NUMBER_TOKEN
        token = "NaN" if kind == "nan" else pick(("Infinity", "-Infinity", "1e999"))
        return orjson.dumps(event).replace(orjson.dumps(_NUMBER_TOKEN), token.encode())
    elif kind == facts.bound_kind:
        field = pick(facts.bounded)
        # Zero is a valid reading but not a valid amount.
        zero_breaks = kind == "non_positive_amount"
        event[field] = 0 if zero_breaks and rng.random() < 0.3 else -round(abs(event[field]) + 0.5, 2)
    elif kind == "bad_time":
        day = dt.date.fromisoformat(event["event_time"][:10])
        event["event_time"] = pick(("yesterday", f"{day:%d/%m/%Y} {event['event_time'][11:19]}",
                                    f"{day:%Y-%m}-32T09:14:03.120Z", "now"))
    elif kind == "time_without_zone":
        event["event_time"] = event["event_time"][: pick((-1, -5))]
    elif kind == "empty_id":
        event["event_id"] = ""
    elif kind == "bad_enum":
        event["channel"] = pick(("phone", "mail_order", "kiosk"))
    elif kind == "unknown_offer":  # a label outside the declared offers
        event["next_offer"] = pick(("timeshare", "GROCERIES", ""))
    elif kind == "bad_code":
        if rng.random() < 0.5:
            event["currency"] = event["currency"][:2]
        else:
            event["country"] = COUNTRY_ALPHA3[event["country"]]
    else:
        raise ValueError(f"unknown kind of broken line: {kind}")
    return orjson.dumps(event)


# --------------------------------------------------------------------------------------------
# days, files and the manifest
# --------------------------------------------------------------------------------------------

MODELS = {"fraud": FraudModel, "sensor": SensorModel, "offers": OffersModel}


@dataclasses.dataclass
class DayFile:
    """What one day file holds, as recorded in the manifest."""

    date: str
    file: str
    lines: int
    valid: int
    positive: int  # valid lines whose label is 1 (a class label: lines with one)
    broken: dict[str, int]
    classes: dict[str, int] | None = None  # a class label's: valid lines per class


def format_event_times(day: dt.date, offsets_ms: np.ndarray) -> list[str]:
    """RFC 3339 UTC times with milliseconds and Z, e.g. 2026-03-16T09:14:03.120Z."""
    midnight = np.datetime64(day.isoformat(), "ms")
    text = np.datetime_as_string(midnight + offsets_ms.astype("timedelta64[ms]"), unit="ms")
    return [t + "Z" for t in text.tolist()]


def day_events(model, rng: np.random.Generator, day_index: int, day: dt.date,
               n_events: int) -> list[dict]:
    """One day of valid events, roughly in time order, with unique ids."""
    offsets_ms, columns = model.day(rng, day_index, n_events)
    # Events reach the archive a little out of order, as they do from real producers.
    order = np.argsort(offsets_ms + rng.normal(0, 2_000, offsets_ms.size), kind="stable")
    ids = [f"{model.id_prefix}-{day:%Y%m%d}-{i:06d}" for i in range(offsets_ms.size)]
    times = format_event_times(day, offsets_ms[order])
    order = order.tolist()
    names = ["event_id", "event_time", *columns]
    rows = zip(ids, times, *([values[i] for i in order] for values in columns.values()))
    return [dict(zip(names, row)) for row in rows]


def day_lines(events: list[dict], broken_kinds: list[str], facts: ContractFacts,
              rng: np.random.Generator) -> tuple[list[bytes], dict[str, int], list[dict]]:
    """Serialises a day's events, breaking randomly placed ones in the planned ways.

    Returns the lines, the count of broken lines per kind and the events of the valid lines."""
    lines = [orjson.dumps(event) for event in events]
    broken_at = rng.choice(len(events), len(broken_kinds), replace=False).tolist()
    for position, kind in zip(broken_at, rng.permutation(broken_kinds).tolist()):
        lines[position] = break_event(kind, events[position], facts, rng)
    broken = {kind: broken_kinds.count(kind) for kind in sorted(set(broken_kinds))}
    broken_at = set(broken_at)
    return lines, broken, [event for i, event in enumerate(events) if i not in broken_at]


def write_lines(path: pathlib.Path, lines: list[bytes], compress: bool) -> None:
    """Writes newline-terminated lines, gzip-compressed with a fixed header if asked, and
    removes the other variant of the file so readers never see both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"\n".join(lines) + b"\n"
    if compress:
        with open(path, "wb") as raw, gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as out:
            out.write(data)
        path.with_suffix("").unlink(missing_ok=True)
    else:
        path.write_bytes(data)
        path.with_name(path.name + ".gz").unlink(missing_ok=True)


def shift_numbers(events: list[dict], fields: tuple[str, ...], factor: float) -> None:
    """Multiplies the given number fields of every event by factor, in place (rounded to 6 decimals, so
    12.35 * 3 is written 37.05)."""
    for event in events:
        for field in fields:
            event[field] = round(event[field] * factor, 6)


def generate(spec: str, days: int, out: pathlib.Path, start: dt.date, events_per_day: int,
             broken_share: float, seed: int, compress: bool, drift_day: dt.date | None = None,
             drift_factor: float = 3.0) -> dict:
    """Writes the archive and its manifest; returns the manifest.

    With ``drift_day``, that day's number fields are multiplied by ``drift_factor``."""
    spec_number = list(MODELS).index(spec)
    population_seed, *day_seeds = np.random.SeedSequence([seed, spec_number]).spawn(1 + days)
    model = MODELS[spec](np.random.default_rng(population_seed), days)
    facts = CONTRACTS[spec]
    broken_per_day = [int(round(broken_share * events_per_day))] * days
    kinds_per_day = plan_broken_kinds(facts.kinds, broken_per_day)

    day_files = []
    for day_index, (day_seed, broken_kinds) in enumerate(zip(day_seeds, kinds_per_day)):
        rng = np.random.default_rng(day_seed)
        day = start + dt.timedelta(days=day_index)
        events = day_events(model, rng, day_index, day, events_per_day)
        if day == drift_day:
            shift_numbers(events, facts.numbers, drift_factor)
        lines, broken, valid = day_lines(events, broken_kinds, facts, rng)
        relative = f"dt={day.isoformat()}/events.jsonl" + (".gz" if compress else "")
        write_lines(out / relative, lines, compress)
        labels = [event[model.label] for event in valid]
        classes = dict(sorted(collections.Counter(labels).items())) if labels and isinstance(labels[0], str) else None
        day_files.append(DayFile(date=day.isoformat(), file=relative, lines=len(lines), valid=len(valid),
                                 positive=sum(map(bool, labels)), broken=broken, classes=classes))
    manifest = {
        "spec": spec, "seed": seed, "start": start.isoformat(), "events_per_day": events_per_day,
        "broken_share": broken_share, "compressed": compress, "label": model.label,
        "drift": None if drift_day is None else {"day": drift_day.isoformat(), "factor": drift_factor,
                                                  "fields": list(facts.numbers)},
        "days": [dataclasses.asdict(day_file) for day_file in day_files],
    }
    (out / MANIFEST_NAME).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def summary(manifest: dict, out: pathlib.Path, seconds: float) -> str:
    """A few lines saying what was written."""
    days = manifest["days"]
    lines = sum(day["lines"] for day in days)
    valid = sum(day["valid"] for day in days)
    positive = sum(day["positive"] for day in days)
    classes = collections.Counter()
    for day in days:
        classes.update(day["classes"] or {})
    kinds: dict[str, int] = {}
    for day in days:
        for kind, count in day["broken"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    broken = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())) or "none"
    return (f"wrote {len(days)} day files ({days[0]['date']} .. {days[-1]['date']}) and "
            f"{MANIFEST_NAME} under {out} in {seconds:.1f} s\n"
            f"{lines} lines: {valid} valid ({_label_summary(manifest['label'], positive, classes, valid)}), "
            f"{lines - valid} broken ({broken})"
            + (f"\n{', '.join(drift['fields'])} multiplied by {drift['factor']:g} on {drift['day']}"
               if (drift := manifest["drift"]) else ""))


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------



class _OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser that reports a bad flag in one line on stderr and exits with 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _label_summary(label: str, positive: int, classes: collections.Counter, valid: int) -> str:
    """``123 with is_fraud=1``, or for a class label how many classes and the commonest one's share."""
    if not classes:
        return f"{positive} with {label}=1"
    commonest, count = classes.most_common(1)[0]
    return f"{label}: {len(classes)} classes, the commonest {commonest} {count / valid:.1%}"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _date(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date as YYYY-MM-DD: {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _OneLineErrorParser(
        prog=cli.PROG or "python -m pipelines.generate",
        description="Write a labelled, day-partitioned JSON Lines archive of synthetic events "
                    "for a built-in spec, with a share of lines that break the event contract, "
                    f"and a manifest {MANIFEST_NAME} counting valid and broken lines per day.")
    parser.add_argument("--spec", required=True, choices=list(MODELS),
                        help="fraud: card transactions labelled is_fraud; sensor: telemetry of "
                             "30 machines labelled failure, with the extra field regime; offers: shop "
                             "customers' views and purchases labelled next_offer, the category bought next")
    parser.add_argument("--days", required=True, type=_int_at_least(1), metavar="N",
                        help="number of consecutive days to write, one file each")
    parser.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR",
                        help="output directory; gets dt=YYYY-MM-DD/events.jsonl[.gz] and "
                             f"{MANIFEST_NAME} (existing files of the same days are replaced)")
    parser.add_argument("--start", type=_date, default=dt.date(2026, 3, 1), metavar="YYYY-MM-DD",
                        help="first day, YYYY-MM-DD (default: 2026-03-01)")
    parser.add_argument("--events_per_day", type=_int_at_least(1), default=None, metavar="N",
                        help="lines per day file, broken ones included; for sensor spread "
                             "evenly over the 30 machines (default: 10000 for fraud and offers; 8640 "
                             "for sensor, i.e. every machine every 5 minutes)")
    parser.add_argument("--broken_share", type=_share, default=0.01, metavar="SHARE",
                        help="share of lines that break the contract, cycling through all "
                             "kinds (default: 0.01; 0 for none)")
    parser.add_argument("--seed", type=_int_at_least(0), default=7, metavar="N",
                        help="random seed; the same flags and seed give byte-identical files "
                             "(default: 7)")
    parser.add_argument("--compress", action="store_true",
                        help="gzip the day files (events.jsonl.gz)")
    parser.add_argument("--drift_day", type=_date, default=None, metavar="YYYY-MM-DD",
                        help="a day whose number fields (fraud, offers: amount; sensor: the readings) are "
                             "multiplied by --drift_factor, to test drift monitoring")
    parser.add_argument("--drift_factor", type=_positive, default=3.0, metavar="F",
                        help="the factor of --drift_day (default: 3)")
    args = parser.parse_args(argv)
    try:
        last = args.start + dt.timedelta(days=args.days - 1)
    except OverflowError:
        parser.error(f"--days {args.days} from --start {args.start} runs past the year 9999")
    if args.drift_day is not None and not args.start <= args.drift_day <= last:
        parser.error(f"--drift_day {args.drift_day} is not one of the days written ({args.start} .. {last})")
    if args.events_per_day is None:
        args.events_per_day = MODELS[args.spec].default_events_per_day
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        manifest = generate(args.spec, args.days, args.out, args.start, args.events_per_day,
                            args.broken_share, args.seed, args.compress, args.drift_day,
                            args.drift_factor)
    except OSError as error:
        print(f"python -m pipelines.generate: error: cannot write under {args.out}: {error}",
              file=sys.stderr)
        return 1
    print(summary(manifest, args.out, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
