"""Adding and removing voices of the library under the rules the gateway and the CLI share.

`pipeline/voicelib.py` checks clips and stores records; this module decides whether an add or a
delete may happen at all, in one order for both callers (`POST`/`DELETE /v1/audio/voices` and
`tts-pipeline voices add|delete`):

1. a model server's built-in voice name is refused (`builtin`): a stored voice would hide it;
2. a name that is not a token is refused (`bad_name`);
3. the clip is checked (`voicelib.ClipError` with its reason) before anything is written;
4. an existing stored voice is replaced only with `overwrite` (`exists`);
5. a stored voice that an unfinished job uses is neither replaced nor deleted without `force`
   (`in_use`, naming the jobs): its chapters still to be spoken would change voice mid-book.

Who uses a voice is asked through `users_of(name)` (the jobs bucket: `jobs_using_voice`), so each
caller keeps its own timeout and error mapping for the bus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pipeline import voicelib
from pipeline.contracts.messages import HIGGS_PRESET_VOICES
from pipeline.contracts.subjects import TOKEN_RE
from pipeline.store import Store

UsersOf = Callable[[str], Awaitable[list[str]]]


class VoiceRefused(voicelib.PresetError):
    """An add or delete the rules refuse; `reason` is one of builtin, bad_name, exists, in_use,
    not_found, and `jobs` names the jobs of an `in_use` refusal."""

    def __init__(self, reason: str, message: str, jobs: list[str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.jobs = jobs or []


def _in_use(name: str, users: list[str], doing: str) -> VoiceRefused:
    listed = ", ".join(users[:5]) + (" ..." if len(users) > 5 else "")
    return VoiceRefused("in_use", f"Voice '{name}' is in use by job {listed}; it cannot be {doing} until the job "
                                  "is done", users)


async def add_voice(store: Store, name: str, clip: bytes, transcript: str, scene_prompt: str | None, *,
                    builtin: set[str], users_of: UsersOf, overwrite: bool = False, force: bool = False,
                    sample_rate_hz: int = 24000) -> tuple[voicelib.VoicePreset, bool]:
    """Store `clip` as voice `name` (source "library"); returns (the record, whether it replaced one)."""
    if name in HIGGS_PRESET_VOICES or name in builtin:
        raise VoiceRefused("builtin", f"'{name}' is a built-in voice of the model servers; choose another name")
    try:
        voicelib.check_name(name)
    except voicelib.PresetError as exc:
        raise VoiceRefused("bad_name", str(exc)) from None
    wav, duration_s = await asyncio.to_thread(voicelib.check_clip, clip, transcript, sample_rate_hz)
    existing = await voicelib.read_voice(store, name)
    if existing is not None:
        if not overwrite:
            raise VoiceRefused("exists", f"A voice named '{name}' exists ({existing.source})")
        if not force and (users := await users_of(name)):
            raise _in_use(name, users, "replaced")
        await voicelib.delete_voice(store, name)  # a failed write below then leaves no mix of both
    voice = await voicelib.store_voice(store, name, wav, transcript, scene_prompt, duration_s, "library")
    return voice, existing is not None


async def remove_voice(store: Store, name: str, *, builtin: set[str], users_of: UsersOf, force: bool = False) -> None:
    """Delete stored voice `name` (uploaded or folder-synced; a later `voices sync` brings a preset back)."""
    if not (TOKEN_RE.match(name) and await store.exists(voicelib.meta_key(name))):
        note = " (a built-in voice of the model servers cannot be deleted)" if (
            name in HIGGS_PRESET_VOICES or name in builtin) else ""
        raise VoiceRefused("not_found", f"No stored voice '{name}'{note}")
    if not force and (users := await users_of(name)):
        raise _in_use(name, users, "deleted")
    await voicelib.delete_voice(store, name)
