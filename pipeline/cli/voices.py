"""`tts-pipeline voices list | add | delete | sync`: the voice library from the command line.

The same library and rules as `/v1/audio/voices` (`pipeline/jobs/library.py`): a clip is checked
before anything is stored, a built-in name is refused, an existing voice is replaced only with
`--overwrite`, and a voice an unfinished job uses is neither replaced nor deleted without `--force`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import voicelib
from pipeline.cli.jobs import connection
from pipeline.contracts.errors import StartupError
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import Names
from pipeline.jobs import api as jobs_api
from pipeline.jobs import library
from pipeline.jobs.cast import heartbeat_voices


def _users_in(kv):
    return lambda name: jobs_api.jobs_using_voice(kv, name)


async def _builtin(js, settings: Settings) -> set[str]:
    """The voices the live workers' model servers report (none when no heartbeat can be read)."""
    return await heartbeat_voices(js, Names(settings.namespace)) or set()


async def list_all(settings: Settings, as_json: bool) -> int:
    async with connection(settings, "tts-voices") as (js, store, kv):
        stored = await voicelib.list_voices(store)
        builtin = await _builtin(js, settings) - {v.name for v in stored}
    rows = [{"name": v.name, "source": v.source, "duration_s": v.duration_s, "transcript": v.transcript,
             "system_prompt": v.system_prompt} for v in stored]
    rows += [{"name": n, "source": "builtin", "duration_s": None} for n in sorted(builtin)]
    rows.sort(key=lambda r: r["name"])
    if as_json:
        print(json.dumps({"voices": rows}, indent=1))
        return 0
    if not rows:
        print("no voices (no stored voice, and no worker reports its model servers' own)")
    for row in rows:
        seconds = "" if row["duration_s"] is None else f"{row['duration_s']:5.1f} s"
        words = (row.get("transcript") or "")[:60]
        print(f"  {row['name']:<24} {row['source']:<8} {seconds:>7}  {words}")
    return 0


async def add(settings: Settings, name: str, clip: str, transcript: str | None, transcript_file: str | None,
              scene_prompt: str | None, overwrite: bool, force: bool) -> int:
    if transcript_file:
        try:
            transcript = Path(transcript_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"cannot read the transcript {transcript_file}: {exc}") from None
    try:
        data = Path(clip).read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the clip {clip}: {exc.strerror or exc}") from None
    async with connection(settings, "tts-voices") as (js, store, kv):
        builtin = await _builtin(js, settings)
        try:
            voice, replaced = await library.add_voice(
                store, name, data, transcript or "", scene_prompt, builtin=builtin, users_of=_users_in(kv),
                overwrite=overwrite, force=force, sample_rate_hz=settings.sample_rate_hz)
        except voicelib.ClipError as exc:
            raise StartupError(f"cannot add voice '{name}' ({exc.reason}): {exc}") from None
        except library.VoiceRefused as exc:
            hint = {"exists": "; add --overwrite to replace it", "in_use": " (or add --force)"}.get(exc.reason, "")
            raise StartupError(f"cannot add voice '{name}': {exc}{hint}") from None
    print(f"voice {voice.name} {'replaced' if replaced else 'added'}: {voice.duration_s:.1f} s, "
          f"s3://{settings.s3_bucket}/{voice.audio_key}; use it as --voice {voice.name} or in a cast")
    return 0


async def delete(settings: Settings, name: str, force: bool) -> int:
    async with connection(settings, "tts-voices") as (js, store, kv):
        builtin = await _builtin(js, settings)
        try:
            await library.remove_voice(store, name, builtin=builtin, users_of=_users_in(kv), force=force)
        except library.VoiceRefused as exc:
            hint = " (or add --force)" if exc.reason == "in_use" else ""
            raise StartupError(f"cannot delete voice '{name}': {exc}{hint}") from None
    print(f"voice {name} deleted")
    return 0
