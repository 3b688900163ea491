"""The benchmark's workload: iconik-style events of about 2 KB and webhook definitions.

Both are built from the seed document (../shared/seed/iconik-webhooks.txt): its two example
events (the metadata update and the formats update) give the events' shapes, and its queries
give the definitions' queries, as in benches/matching.rs. Everything is deterministic (fixed
random seeds), so every run sends the same bytes.

The mix is designed so that about 10% of events match at least one webhook at every definition
count (10, 100, 1,000):

* Every query of a definition has a selective clause (``is_online=true``, ``duration>60000``,
  a MPEG-2/4 component, one user, a shared flag, GCS storage, a system deletion), and ordinary
  events fail all of them, whatever their type, realm and operation.
* Definitions watching one object (``object_id``) watch objects that ordinary events never are.
* One event in ten is made to satisfy one of the first ten definitions (present in every
  configuration): its type, realm, operation and object are that definition's, and its fields
  satisfy that definition's query. With more definitions, the same event may match several.

So ordinary events still go through the index and have their candidates' queries evaluated, as
in production, but only the chosen 10% make calls. ``wasm-bench-native classify`` checks the
real numbers with the filter's own matcher; run.py reports them.
"""

from __future__ import annotations

import json
import random
import uuid

SYSTEM_DOMAIN = "1297c8b6-3563-11e7-adf1-6c4008b85488"
SPECIAL_USER = "9b219676-7567-11e9-806b-62fe166f0ad7"
EVENT_PATH = "/API/events/v1/events"  # where the platform POSTs its events: the event route
# The platform's other traffic: GETs of its API, on routes without the filter.
OTHER_PATH = "/API/assets/v1/assets/918728e2-bc1c-11ed-aaef-66cff3148306/"
# The mixed traffic a platform sees: this many GETs of OTHER_PATH for each event POST.
GETS_PER_EVENT = 9

# (event_type, realm, operation) with a weight: how often the platform emits such events.
# Asset metadata and format updates dominate in a media asset manager; jobs report progress.
COMBOS: list[tuple[str, str, str, int]] = [
    ("assets", "metadata", "update", 20),
    ("assets", "formats", "update", 10),
    ("assets", "formats", "create", 8),
    ("assets", "files", "create", 8),
    ("assets", "files", "update", 5),
    ("assets", "entity", "update", 8),
    ("assets", "entity", "create", 5),
    ("assets", "entity", "delete", 2),
    ("assets", "segments", "create", 4),
    ("assets", "segments", "update", 3),
    ("assets", "shares", "create", 2),
    ("assets", "acls", "update", 2),
    ("assets", "entity", "download", 2),
    ("collections", "contents", "create", 5),
    ("collections", "contents", "delete", 2),
    ("collections", "entity", "update", 3),
    ("collections", "metadata", "update", 2),
    ("jobs", "entity", "update", 8),
    ("jobs", "entity", "create", 3),
    ("users", "entity", "update", 1),
]

# The seed's queries, each made selective (see the module doc). ``trigger`` names the change
# that makes an event satisfy it.
QUERIES: list[tuple[str, str]] = [
    ('data.status="ACTIVE" AND data.is_online=true AND (data.components.metadata.format="AVC" '
     'OR data.components.metadata.format="MPEG-4")', "online"),
    ("(data.components.metadata.width>=1920 OR data.components.metadata.height>=1920) "
     "AND data.components.metadata.duration>60000", "long"),
    ("data.deleted_by_user=null AND data.date_deleted!=null", "system_deleted"),
    ("data.components.metadata.format=/MPEG-[2,4]/", "mpeg"),
    (f'user_id="{SPECIAL_USER}"', "user"),
    ('data.metadata_values.share.field_values.value="true"', "shared"),
    ('data.archive_status!="ARCHIVED" AND data.storage_methods="GCS"', "gcs"),
]

# Objects that some webhooks watch; ordinary events are never about them.
WATCHED_OBJECTS = [str(uuid.UUID(int=random.Random(f"watched-{i}").getrandbits(128), version=1))
                   for i in range(50)]

USERS = [str(uuid.UUID(int=random.Random(f"user-{i}").getrandbits(128), version=1)) for i in range(40)]

TARGET_BYTES = 2048


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=1))


def _hex(rng: random.Random, n: int = 32) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _pick_combo(rng: random.Random) -> tuple[str, str, str]:
    weights = [w for *_, w in COMBOS]
    t, r, o, _ = rng.choices(COMBOS, weights)[0]
    return t, r, o


# --------------------------------------------------------------------------- definitions


def definitions(count: int, url_host: str = "webhooks") -> list[dict]:
    """``count`` webhook definitions; ``definitions(n)`` is a prefix of ``definitions(m)`` for
    n <= m, so the first ten (which the matching events target) are in every configuration."""
    rng = random.Random(20240601)
    out = []
    for i in range(count):
        event_type, realm, operation = _pick_combo(rng)
        kind = rng.random()
        hook: dict = {
            "id": f"hook-{i}",
            "name": f"Webhook {i}",
            "event_type": event_type,
            "url": f"http://{url_host}/hooks/{i}",
        }
        # Some listen to every operation of the realm, a few to every realm of the type.
        if kind < 0.15:
            hook["operation"] = "all"
            hook["realm"] = realm
        elif kind < 0.22:
            hook["realm"] = None
            hook["operation"] = operation
        else:
            hook["realm"] = realm
            hook["operation"] = operation
        if rng.random() < 0.10:
            # Watches one object: any change to it, or only some (seed-style query).
            hook["object_id"] = WATCHED_OBJECTS[i % len(WATCHED_OBJECTS)]
            hook["query"] = "" if rng.random() < 0.5 else QUERIES[i % len(QUERIES)][0]
        else:
            hook["query"] = QUERIES[i % len(QUERIES)][0]
        out.append(hook)
    return out


def plugin_config(count: int) -> dict:
    """The plugin configuration for ``count`` definitions (delivery defaults; no admin API)."""
    return {"webhooks": definitions(count)}


# --------------------------------------------------------------------------- events


def _components(rng: random.Random, long: bool = False, mpeg: bool = False, online: bool = False) -> list[dict]:
    duration = str(rng.randint(120_000, 3_600_000) if long else rng.randint(2_000, 59_000))
    video_format = "MPEG-2" if mpeg else ("AVC" if online else rng.choice(["AVC", "HEVC", "ProRes"]))
    return [
        {"type": "VIDEO", "name": "VIDEO", "id": _uuid(rng),
         "metadata": {"format": video_format, "internet_media_type": "video/H264", "duration": duration,
                      "bit_rate_mode": "VBR", "bit_rate": str(rng.randint(2_000_000, 40_000_000)),
                      "width": rng.choice(["3840", "1920", "1280"]), "height": rng.choice(["2160", "1080", "720"]),
                      "frame_rate": rng.choice(["25.000", "29.970", "50.000"])}},
        {"type": "AUDIO", "name": "AUDIO", "id": _uuid(rng),
         "metadata": {"format": "AAC", "duration": duration, "source_duration": duration,
                      "bit_rate": str(rng.randint(96_000, 320_000)), "channel_s": rng.choice(["2", "6"])}},
    ]


def _data(rng: random.Random, event_type: str, realm: str, object_id: str, trigger: str | None) -> dict:
    """The ``data`` of an event, shaped by its realm after the seed's examples. With no
    ``trigger`` it fails every query of QUERIES; with one, it satisfies that query."""
    now = f"2024-0{rng.randint(1, 9)}-{rng.randint(10, 28)}T{rng.randint(10, 23)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}.{rng.randint(100000, 999999)}+00:00"
    data: dict = {
        "id": _uuid(rng),
        "status": "ACTIVE",
        "is_online": trigger == "online",
        "archive_status": "NOT_ARCHIVED" if trigger == "gcs" else rng.choice(["NOT_ARCHIVED", "ARCHIVED"]),
        "storage_methods": ["GCS"] if trigger == "gcs" else [rng.choice(["S3", "AZURE", "FILE"])],
        "user_id": rng.choice(USERS),
        "deleted_by_user": None if trigger == "system_deleted" else rng.choice([None, rng.choice(USERS)]),
        "date_deleted": now if trigger == "system_deleted" else None,
        "date_created": now,
        "date_modified": now,
        "version_id": _uuid(rng),
    }
    if event_type == "assets" and realm == "formats":
        data.update({
            "name": rng.choice(["ORIGINAL", "PPRO_PROXY", "AUDIO_PROXY"]),
            "metadata": [{"format": "MPEG-4", "internet_media_type": "video/mp4", "overall_bit_rate_mode": "VBR",
                          "overall_bit_rate": str(rng.randint(2_000_000, 40_000_000)), "frame_rate": "25.000",
                          "frame_count": str(rng.randint(100, 90_000)), "size": "0"}],
            "components": _components(rng, trigger == "long", trigger == "mpeg", trigger == "online"),
            "asset_id": object_id,
        })
    elif realm == "metadata":
        data.update({
            "metadata_values": {
                "share": {"date_created": now, "field_values": [{"value": "true" if trigger == "shared" else "false"}]},
                "title": {"date_created": now, "field_values": [{"value": f"Interview take {rng.randint(1, 40)}"}]},
                "keywords": {"date_created": now, "field_values": [{"value": w} for w in rng.sample(
                    ["news", "sport", "archive", "interview", "b-roll", "promo", "drone"], 3)]},
            },
            "object_id": object_id,
            "object_type": event_type,
        })
    elif realm == "files":
        data.update({
            "name": f"clip_{rng.randint(1000, 9999)}.mov", "original_name": f"CLIP{rng.randint(1000, 9999)}.MOV",
            "directory_path": f"projects/{rng.randint(100, 999)}/media", "size": rng.randint(10**6, 10**10),
            "type": "FILE", "storage_id": _uuid(rng), "format_id": _uuid(rng), "file_set_id": _uuid(rng),
            "checksum": _hex(rng), "asset_id": object_id,
        })
    elif realm == "segments":
        data.update({
            "segment_type": rng.choice(["MARKER", "COMMENT", "QC"]), "time_start_milliseconds": rng.randint(0, 60_000),
            "time_end_milliseconds": rng.randint(60_000, 120_000), "segment_text": "Check the audio levels here",
            "segment_color": "#ff0000", "asset_id": object_id,
        })
    elif event_type == "jobs":
        data.update({
            "type": rng.choice(["TRANSCODE", "ANALYZE", "TRANSFER", "DELETE"]),
            "title": f"Transcode {rng.randint(1, 9999)}", "progress_processed": rng.randint(0, 100),
            "object_type": "assets", "object_id": _uuid(rng), "priority": 5,
        })
    else:
        data.update({
            "title": f"Asset {rng.randint(1, 99999)}", "type": "ASSET", "category": rng.choice(["video", "image", "audio"]),
            "external_id": _hex(rng, 16), "created_by_user": rng.choice(USERS), "analyze_status": "N/A",
            "warning": "", "is_blocked": False,
        })
    if trigger in ("online", "long", "mpeg") and "components" not in data:
        data["components"] = _components(rng, trigger == "long", trigger == "mpeg", trigger == "online")
    if trigger == "shared" and "metadata_values" not in data:
        data["metadata_values"] = {"share": {"date_created": now, "field_values": [{"value": "true"}]}}
    return data


def _event(rng: random.Random, combo: tuple[str, str, str], object_id: str, user_id: str | None,
           trigger: str | None) -> dict:
    event_type, realm, operation = combo
    event = {
        "system_domain_id": SYSTEM_DOMAIN,
        "event_type": event_type,
        "object_id": object_id,
        "user_id": user_id,
        "realm": realm,
        "operation": operation,
        "data": _data(rng, event_type, realm, object_id, trigger),
        "request_id": _hex(rng),
    }
    # Pad to about TARGET_BYTES with a description, as assets carry.
    size = len(json.dumps(event, separators=(",", ":")))
    room = TARGET_BYTES + rng.randint(-120, 120) - size - len(',"description":""')
    if room > 0:
        words = ("footage interview city night aerial drone slow motion graded rough cut "
                 "final master archive broadcast promo colour sound mix").split()
        text = ""
        while len(text) < room:
            text += rng.choice(words) + " "
        event["data"]["description"] = text[:room].strip()
    return event


def event_set(count: int = 1000, matching_share: float = 0.10) -> list[tuple[str, bool]]:
    """``count`` compact JSON events, each with whether it was made to match one of the first
    ten definitions (``matching_share`` of them are)."""
    rng = random.Random(42)
    targets = definitions(10)
    matching_at = set(rng.sample(range(count), round(count * matching_share)))
    out = []
    for i in range(count):
        if i in matching_at:
            hook = targets[rng.randrange(len(targets))]
            event_type = hook["event_type"]
            realms = [r for t, r, o, _ in COMBOS if t == event_type]
            realm = hook.get("realm") or rng.choice(realms)
            ops = [o for t, r, o, _ in COMBOS if t == event_type and r == realm] or ["update"]
            operation = hook["operation"] if hook.get("operation") not in (None, "all") else rng.choice(ops)
            object_id = hook.get("object_id") or _uuid(rng)
            query = hook.get("query", "")
            trigger = next((t for q, t in QUERIES if q == query), None)
            user_id = SPECIAL_USER if trigger == "user" else rng.choice(USERS)
            event = _event(rng, (event_type, realm, operation), object_id, user_id, trigger)
        else:
            event = _event(rng, _pick_combo(rng), _uuid(rng), rng.choice(USERS + [None]), None)
        out.append((json.dumps(event, separators=(",", ":")), i in matching_at))
    return out


def events(count: int = 1000, matching_share: float = 0.10) -> list[str]:
    """The events of ``event_set``, as sent."""
    return [text for text, _ in event_set(count, matching_share)]


def ordinary_events(count: int = 1000) -> list[str]:
    """Only the events of ``event_set`` that were not made to match: none matches any webhook,
    but each still goes through the index and its candidates' queries."""
    return [text for text, matching in event_set(count) if not matching]


def candidate_single_events(count: int = 2000) -> list[str]:
    """Events each made to match one of the first ten definitions; the bench keeps those that
    match exactly one webhook of its definitions (``wasm-bench-native counts``)."""
    return [text for text, _ in event_set(count, matching_share=1.0)]


if __name__ == "__main__":  # a quick look: python3 integration/bench/workload.py
    evs = events()
    sizes = sorted(len(e) for e in evs)
    print(f"{len(evs)} events, {sizes[0]}..{sizes[-1]} bytes, median {sizes[len(sizes) // 2]}")
    print(evs[0][:400], "...")
    print(json.dumps(definitions(3), indent=1))
