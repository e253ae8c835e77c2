"""A deterministic simulator of phone unlocks whose users behave like people.

Each user has an archetype (daily rhythm and taste by app category), a personal set of apps
with idiosyncratic weights, favourite apps at favourite hours, app-to-app habits, a location
schedule, a battery that drains and charges, and for some users a habit change part-way.
The learnable structure is real (context, sequence, device state) and noisy enough that
"most used at this hour" is a good baseline, not a perfect one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feastflow.events import EVENT_COLUMNS

# category -> named apps; the long tail adds generic apps to reach ~100.
NAMED_APPS: dict[str, list[str]] = {
    "messaging": ["messages", "chatline", "whisper", "signalx"],
    "social": ["photogram", "chirp", "facespace", "clipstream", "threadz"],
    "email": ["mail", "workmail"],
    "calendar": ["calendar"],
    "video_call": ["meetup", "zoomcall", "teamsphere"],
    "video": ["streamflix", "tubeview", "primecast", "animebox"],
    "music": ["tunes", "soundwave", "radioplus"],
    "podcast": ["podcasts", "audiobooks"],
    "news": ["dailynews", "headlines", "sportsnow"],
    "maps": ["maps", "transit"],
    "ride": ["rideshare", "scooters"],
    "games": ["puzzlequest", "wordle", "clashkings", "racer3d", "candyblast"],
    "banking": ["mybank", "paywallet", "stocks"],
    "shopping": ["shopmart", "marketplace", "fashionly"],
    "fitness": ["runtracker", "yogaday", "stepcount"],
    "camera": ["camera", "gallery"],
    "browser": ["browser"],
    "notes": ["notes", "todo", "docs"],
    "weather": ["weather"],
    "food": ["foodrun", "recipes"],
}
TAIL_CATEGORIES = ["utility", "games", "shopping", "social", "news", "utility"]
N_TAIL_APPS = 45

# hour -> slot index: night, early, morning, midday, afternoon, evening, late
SLOT_OF_HOUR = np.array([0] * 6 + [1] * 3 + [2] * 3 + [3] * 2 + [4] * 3 + [5] * 4 + [6] * 3)
N_SLOTS = 7
LOCATIONS = ["home", "work", "commute", "other"]

# category -> multiplier per slot (night, early, morning, midday, afternoon, evening, late)
SLOT_TASTE: dict[str, list[float]] = {
    "messaging": [1, 1.2, 1, 1.2, 1, 1.3, 1.2],
    "social": [1.3, 0.8, 0.7, 1.3, 0.8, 1.3, 1.6],
    "email": [0.2, 2.5, 2.0, 1.0, 1.2, 0.5, 0.3],
    "calendar": [0.1, 3.0, 1.5, 0.8, 0.8, 0.3, 0.5],
    "video_call": [0.05, 0.5, 2.5, 1.0, 2.0, 0.4, 0.1],
    "video": [1.0, 0.2, 0.2, 0.6, 0.4, 2.5, 3.0],
    "music": [0.4, 1.5, 0.8, 0.6, 0.8, 1.3, 0.6],
    "podcast": [0.3, 1.8, 0.6, 0.6, 0.6, 1.2, 0.8],
    "news": [0.3, 3.0, 1.2, 1.2, 0.6, 0.8, 0.6],
    "maps": [0.2, 1.0, 0.8, 1.2, 0.8, 1.2, 0.5],
    "ride": [0.8, 0.8, 0.6, 0.8, 0.8, 1.2, 1.3],
    "games": [2.0, 0.3, 0.4, 1.0, 0.7, 1.2, 2.2],
    "banking": [0.2, 0.8, 1.2, 1.5, 1.0, 0.8, 0.5],
    "shopping": [0.6, 0.3, 0.6, 1.2, 0.8, 1.5, 1.5],
    "fitness": [0.1, 2.5, 0.8, 0.8, 0.8, 1.5, 0.5],
    "camera": [0.3, 0.5, 0.8, 1.3, 1.0, 1.4, 0.7],
    "browser": [1, 1, 1, 1, 1, 1, 1],
    "notes": [0.3, 1.0, 1.8, 1.0, 1.6, 0.6, 0.7],
    "weather": [0.2, 4.0, 1.0, 0.5, 0.5, 0.6, 0.6],
    "food": [0.3, 0.3, 0.4, 2.0, 0.6, 2.5, 0.8],
    "utility": [1, 1, 1, 1, 1, 1, 1],
}
# category -> multiplier per location (home, work, commute, other)
LOCATION_TASTE: dict[str, list[float]] = {
    "email": [0.6, 2.5, 1.0, 0.6],
    "calendar": [0.8, 2.0, 1.0, 0.7],
    "video_call": [0.5, 3.0, 0.3, 0.3],
    "video": [2.5, 0.2, 0.8, 0.4],
    "music": [0.5, 0.6, 4.0, 1.0],
    "podcast": [0.5, 0.4, 4.0, 0.8],
    "maps": [0.2, 0.3, 3.0, 4.0],
    "ride": [0.3, 0.5, 1.5, 5.0],
    "games": [1.5, 0.3, 1.5, 0.6],
    "shopping": [1.4, 0.5, 1.0, 1.2],
    "camera": [0.5, 0.3, 0.8, 4.0],
    "food": [1.5, 1.2, 0.5, 0.8],
    "notes": [0.6, 2.0, 0.8, 0.8],
    "fitness": [1.2, 0.3, 0.8, 2.0],
}
# archetype -> (hourly activity weekday, hourly activity weekend, category affinity)
ARCHETYPES: dict[str, dict] = {
    "professional": {
        "weekday": [0.2, 0.1, 0, 0, 0, 0.3, 1.5, 3, 3, 2, 2, 2, 3, 2, 2, 2, 2, 3, 3, 3, 3, 3, 2, 1],
        "weekend": [0.5, 0.3, 0.1, 0, 0, 0, 0.3, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 1],
        "taste": {"email": 2.5, "calendar": 3.0, "video_call": 2.5, "news": 1.5, "podcast": 1.5},
        "work_hours": (9, 17),
    },
    "student": {
        "weekday": [1.5, 0.8, 0.3, 0, 0, 0, 0.2, 1.5, 2, 2, 2, 2, 3, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 2.5],
        "weekend": [2.5, 2, 1, 0.3, 0, 0, 0, 0.2, 0.5, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3],
        "taste": {"social": 2.5, "games": 2.0, "music": 2.0, "video": 1.5, "email": 0.4},
        "work_hours": (8, 15),
    },
    "night_owl": {
        "weekday": [3, 2.5, 2, 1, 0.3, 0, 0, 0, 0.3, 1, 1.5, 2, 2, 2, 2, 2, 2, 2, 2, 2.5, 3, 3, 3, 3],
        "weekend": [3, 3, 2.5, 2, 1, 0.3, 0, 0, 0, 0.3, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2.5, 3, 3, 3, 3],
        "taste": {"games": 3.0, "video": 2.0, "social": 1.5, "calendar": 0.3, "news": 0.5},
        "work_hours": (11, 19),
    },
    "parent": {
        "weekday": [0.1, 0.1, 0.2, 0.1, 0, 0.5, 2.5, 3, 2, 1.5, 1.5, 2, 2.5, 1.5, 1.5, 2, 2.5, 3, 2, 1.5, 2, 2.5, 1.5, 0.5],
        "weekend": [0.1, 0.1, 0.2, 0.1, 0, 0.3, 2, 2.5, 2.5, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1.5, 2, 2, 1.5, 0.5],
        "taste": {"food": 2.5, "shopping": 2.0, "calendar": 2.0, "camera": 2.0, "messaging": 1.5},
        "work_hours": (9, 16),
    },
    "retiree": {
        "weekday": [0, 0, 0, 0, 0.2, 1, 2, 3, 3, 3, 2, 2, 2, 2, 1.5, 1.5, 2, 2, 2.5, 2.5, 2, 1, 0.3, 0],
        "weekend": [0, 0, 0, 0, 0.2, 1, 2, 3, 3, 3, 2, 2, 2, 2, 1.5, 1.5, 2, 2, 2.5, 2.5, 2, 1, 0.3, 0],
        "taste": {"news": 3.0, "weather": 2.5, "messaging": 2.0, "games": 1.5, "video_call": 0.3},
        "work_hours": None,
    },
}
ARCHETYPE_SHARE = {"professional": 0.35, "student": 0.2, "night_owl": 0.15, "parent": 0.2, "retiree": 0.1}
# (category a, category b, multiplier): b is likely right after a.
CATEGORY_TRANSITIONS = [
    ("calendar", "video_call", 6.0),
    ("email", "calendar", 3.0),
    ("ride", "maps", 4.0),
    ("camera", "social", 5.0),
    ("camera", "messaging", 3.0),
    ("maps", "ride", 3.0),
    ("food", "banking", 2.0),
    ("shopping", "banking", 3.0),
    ("weather", "news", 2.5),
]
SESSION_MEDIAN_SECONDS = {
    "video": 900, "games": 600, "social": 240, "music": 120, "podcast": 120, "messaging": 60,
    "email": 90, "calendar": 30, "video_call": 1200, "maps": 300, "news": 180, "browser": 150,
}


@dataclass(frozen=True)
class AppCatalog:
    """Every app in the simulated world, its category, and its global popularity."""

    names: np.ndarray
    categories: np.ndarray
    popularity: np.ndarray


def build_catalog(rng: np.random.Generator) -> AppCatalog:
    """About 100 apps: the named ones plus a long tail of generic apps."""
    names, categories = [], []
    for category, apps in NAMED_APPS.items():
        names += apps
        categories += [category] * len(apps)
    for i in range(N_TAIL_APPS):
        names.append(f"app_{i:03d}")
        categories.append(TAIL_CATEGORIES[i % len(TAIL_CATEGORIES)])
    ranks = rng.permutation(len(names)) + 1
    popularity = 1.0 / ranks**0.9
    is_tail = np.array([n.startswith("app_") for n in names])
    popularity[is_tail] *= 0.15
    return AppCatalog(np.array(names), np.array(categories), popularity / popularity.sum())


def _taste_matrix(table: dict[str, list[float]], categories: np.ndarray, width: int) -> np.ndarray:
    return np.array([table.get(c, [1.0] * width) for c in categories], dtype=float)


@dataclass
class UserModel:
    """One simulated person: rhythm, apps and their weights, habits and schedule."""

    raw_id: str
    archetype: str
    unlocks_per_day: float
    apps: np.ndarray  # indices into the catalog
    log_weight: np.ndarray  # per app
    slot_boost: np.ndarray  # (apps, slots) personal favourite hours, log scale
    transition: np.ndarray  # (apps, apps) log boost for b right after a
    os_version: str
    change_day: int | None
    new_app: int | None  # catalog index adopted at the change
    new_slot_boost: np.ndarray | None


def _make_user(i: int, days: int, catalog: AppCatalog, rng: np.random.Generator) -> UserModel:
    archetype = rng.choice(list(ARCHETYPE_SHARE), p=list(ARCHETYPE_SHARE.values()))
    taste = ARCHETYPES[archetype]["taste"]
    affinity = catalog.popularity * np.array([taste.get(c, 1.0) for c in catalog.categories])
    n_apps = int(rng.integers(10, 46))
    apps = rng.choice(len(catalog.names), size=n_apps, replace=False, p=affinity / affinity.sum())
    log_weight = np.log(affinity[apps] / affinity[apps].max()) * 0.5 + rng.normal(0, 1.0, n_apps)
    slot_boost = np.zeros((n_apps, N_SLOTS))
    for _ in range(3):  # personal rituals: this app at this time of day
        slot_boost[rng.integers(n_apps), rng.integers(N_SLOTS)] += np.log(rng.uniform(3, 8))
    cats = catalog.categories[apps]
    transition = np.zeros((n_apps, n_apps))
    for a, b, mult in CATEGORY_TRANSITIONS:
        transition[np.ix_(cats == a, cats == b)] += np.log(mult)
    for _ in range(2):  # personal sequences: after this app, that one
        transition[rng.integers(n_apps), rng.integers(n_apps)] += np.log(rng.uniform(4, 10))
    rate = float(np.clip(rng.lognormal(np.log(35), 0.8), 3, 160))
    change_day = new_app = new_slot_boost = None
    if rng.random() < 0.3 and days >= 10:
        change_day = int(days * rng.uniform(0.5, 0.75))
        outside = np.setdiff1d(np.arange(len(catalog.names)), apps)
        new_app = int(rng.choice(outside))
        new_slot_boost = np.zeros((n_apps + 1, N_SLOTS))
        for _ in range(3):
            new_slot_boost[rng.integers(n_apps + 1), rng.integers(N_SLOTS)] += np.log(
                rng.uniform(3, 8)
            )
    os_version = str(rng.choice(["android-13", "android-14", "android-15", "ios-17", "ios-18"]))
    return UserModel(
        f"user_{i:05d}", archetype, rate, apps, log_weight, slot_boost, transition, os_version,
        change_day, new_app, new_slot_boost,
    )


def _location(hour: int, weekend: bool, work_hours: tuple[int, int] | None,
              rng: np.random.Generator) -> int:
    if weekend or work_hours is None:
        if 10 <= hour <= 19 and rng.random() < 0.45:
            return 3
        return 0
    start, end = work_hours
    if hour in (start - 1, end):
        return 2
    if start <= hour < end:
        return 1 if rng.random() < 0.92 else 3
    if 18 <= hour <= 21 and rng.random() < 0.2:
        return 3
    return 0


def _network(location: int, rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.01:
        return "offline"
    if location in (0, 1):
        return "wifi" if r < 0.9 else "cellular"
    return "cellular" if r < 0.85 else "wifi"


def _simulate_user(user: UserModel, start: pd.Timestamp, days: int, catalog: AppCatalog,
                   rng: np.random.Generator) -> list[tuple]:
    arch = ARCHETYPES[user.archetype]
    rows: list[tuple] = []
    apps, log_weight = user.apps, user.log_weight
    slot_boost, transition = user.slot_boost, user.transition
    cats = catalog.categories[apps]
    slot_taste = np.log(_taste_matrix(SLOT_TASTE, cats, N_SLOTS))
    loc_taste = np.log(_taste_matrix(LOCATION_TASTE, cats, 4))
    heavy = np.isin(cats, ["video", "games"])
    streaming = np.isin(cats, ["video", "music", "podcast"])
    session_median = np.array([SESSION_MEDIAN_SECONDS.get(c, 100) for c in cats], dtype=float)
    recent: list[int] = []
    prev_us: int | None = None  # microseconds since the epoch: Timestamp arithmetic is slow
    os_version = user.os_version
    for day in range(days):
        if user.change_day is not None and day == user.change_day:
            # habit change: a new favourite app, new rituals, and an old favourite fades
            apps = np.append(apps, user.new_app)
            log_weight = np.append(log_weight, log_weight.max() + 1.0)
            log_weight[int(np.argmax(log_weight[:-1]))] -= 2.0
            slot_boost = user.new_slot_boost
            transition = np.pad(transition, ((0, 1), (0, 1)))
            cats = catalog.categories[apps]
            slot_taste = np.log(_taste_matrix(SLOT_TASTE, cats, N_SLOTS))
            loc_taste = np.log(_taste_matrix(LOCATION_TASTE, cats, 4))
            heavy = np.isin(cats, ["video", "games"])
            streaming = np.isin(cats, ["video", "music", "podcast"])
            session_median = np.append(session_median, 200.0)
            if os_version.startswith("android") and os_version != "android-15":
                os_version = "android-15"
        date = start + pd.Timedelta(days=day)
        weekend = date.dayofweek >= 5
        day_us = date.value // 1000
        activity = np.array(arch["weekend" if weekend else "weekday"], dtype=float)
        daily_rate = user.unlocks_per_day * rng.lognormal(0, 0.25)
        counts = rng.poisson(daily_rate * activity / activity.sum())
        battery = float(rng.uniform(85, 100))
        for hour in range(24):
            if counts[hour] == 0:
                continue
            location = _location(hour, weekend, arch["work_hours"], rng)
            offsets = np.sort(rng.integers(0, 3_600_000_000, counts[hour]))
            slot = SLOT_OF_HOUR[hour]
            base = log_weight + slot_taste[:, slot] + slot_boost[:, slot] + loc_taste[:, location]
            for offset in offsets:
                ts_us = day_us + hour * 3_600_000_000 + int(offset)
                if prev_us is not None and ts_us <= prev_us:
                    continue
                charging = location == 0 and (hour >= 22 or hour < 7) and rng.random() < 0.8
                charging = charging or (battery < 15 and location in (0, 1) and rng.random() < 0.5)
                network = _network(location, rng)
                logit = base.copy()
                if battery < 20:
                    logit[heavy] -= 1.5
                if charging:
                    logit[heavy] += 0.5
                if network == "cellular":
                    logit[streaming & (cats == "video")] -= 1.2
                if network == "offline":
                    logit[streaming] -= 2.0
                gap = (ts_us - prev_us) / 1e6 if prev_us is not None else None
                if recent:
                    strength = 1.0 if gap is not None and gap < 900 else 0.35
                    logit += strength * transition[recent[-1]]
                    for k, app_idx in enumerate(reversed(recent[-3:])):
                        logit[app_idx] += 0.6 / (k + 1)  # people reopen what they just used
                cumulative = np.cumsum(np.exp(logit - logit.max()))
                choice = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], "right"))
                session = float(np.clip(rng.lognormal(np.log(session_median[choice]), 0.9), 1, 20000))
                rows.append((
                    ts_us, catalog.names[apps[choice]], gap, round(session, 1), LOCATIONS[location],
                    round(battery), bool(charging), network, os_version,
                ))
                battery = battery + 8 if charging else battery - session / 600 - 0.3
                battery = float(np.clip(battery, 2, 100))
                recent = [*recent, choice][-3:]
                prev_us = ts_us
    return rows


def generate_events(users: int, days: int, seed: int, start: str | pd.Timestamp = "2026-01-05",
                    on_user: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Simulate `users` people for `days` days; the same arguments always give the same rows."""
    if users < 1 or days < 1:
        raise ValueError(f"users and days must be >= 1, got users={users}, days={days}")
    rng = np.random.default_rng(seed)
    catalog = build_catalog(rng)
    start_ts = pd.Timestamp(start, tz="UTC").normalize()
    frames = []
    for i in range(users):
        user_rng = np.random.default_rng([seed, i])
        user = _make_user(i, days, catalog, user_rng)
        rows = _simulate_user(user, start_ts, days, catalog, user_rng)
        frame = pd.DataFrame(rows, columns=[
            "timestamp", "app", "secs_since_prev_unlock", "session_seconds", "location",
            "battery", "charging", "network", "os_version",
        ])
        frame["user_id"] = user.raw_id
        frame["event_id"] = [f"{seed}-{i:05d}-{k:07d}" for k in range(len(frame))]
        frames.append(frame)
        if on_user is not None:
            on_user(i)
    events = pd.concat(frames, ignore_index=True)
    events["timestamp"] = pd.to_datetime(events["timestamp"], unit="us", utc=True).astype(
        "datetime64[us, UTC]"
    )
    return events.sort_values(["timestamp", "event_id"], ignore_index=True)[EVENT_COLUMNS]
