"""voxd's /v1/realtime driven by the official `openai` SDK's Realtime client.

Usage: realtime_client.py BASE_URL FIXTURE_DIR
  BASE_URL     e.g. http://127.0.0.1:8000/v1 (the SDK opens BASE_URL/realtime?model=...)
  FIXTURE_DIR  holds weather.pcm and interrupt.pcm: 24 kHz mono PCM16LE

Every server event is validated against the SDK's own pydantic models
(`RealtimeServerEvent`), strictly. Prints one line per scenario and exits non-zero on the first
failure, with what was expected and what came.
"""

import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path

from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
PATIENCE = 30.0
DEBUG = os.environ.get("VOXD_DEBUG_EVENTS") == "1"


class Failure(Exception):
    pass


class Session:
    def __init__(self, conn):
        self.conn = conn
        self.seen = []

    async def next(self):
        raw = await asyncio.wait_for(self.conn.recv_bytes(), PATIENCE)
        data = json.loads(raw)
        try:
            SERVER_EVENT.validate_python(data)
        except Exception as e:
            raise Failure(f"{data.get('type')} does not match the SDK's model: {e}\n{data}")
        self.seen.append(data)
        if DEBUG:
            print(f"  <- {data['type']} {data.get('response', {}).get('status', '')}", file=sys.stderr)
        return data

    async def until(self, ty, *, fail_on=()):
        """Events up to and including the first of type `ty`."""
        got = []
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            e = await self.next()
            got.append(e)
            if e["type"] == ty:
                return got
            if e["type"] in fail_on or (e["type"] == "error" and "error" in fail_on):
                raise Failure(f"waiting for {ty}, got {e}")
        raise Failure(f"no {ty} within {PATIENCE} s")

    async def append(self, pcm, chunk_ms=100):
        step = 24 * 2 * chunk_ms
        for i in range(0, len(pcm), step):
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())


def types(events):
    return [e["type"] for e in events]


def expect(cond, what, events=None):
    if not cond:
        tail = f"\nevents: {types(events)}" if events is not None else ""
        raise Failure(what + tail)


def audio_bytes(events):
    return sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta")


async def main(base_url, fixtures):
    weather = (fixtures / "weather.pcm").read_bytes()
    interrupt = (fixtures / "interrupt.pcm").read_bytes()
    silence = bytes(24 * 2 * 1200)
    client = AsyncOpenAI(base_url=base_url, api_key="test-key")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        s = Session(conn)
        created = await s.next()
        expect(created["type"] == "session.created", f"first event {created['type']}")
        expect(created["session"]["model"] == "gpt-realtime", "the model is reported back")

        # session.update: instructions, a client-side function tool, a voice.
        await conn.session.update(session={
            "type": "realtime",
            "instructions": "You are voxd's test assistant.",
            "tools": [{"type": "function", "name": "open_door", "description": "Opens a door.",
                       "parameters": {"type": "object", "properties": {"door": {"type": "string"}}}}],
            "audio": {"output": {"voice": "marin"}},
        })
        ev = await s.until("session.updated", fail_on=("error",))
        sess = ev[-1]["session"]
        expect(sess["instructions"] == "You are voxd's test assistant.", "instructions applied")
        expect(sess["tools"][0]["name"] == "open_door", "tools applied")
        print("ok session.update")

        # A text item, then response.create.
        await conn.conversation.item.create(item={"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "what about tomorrow"}]})
        await s.until("conversation.item.done", fail_on=("error",))
        await conn.response.create()
        ev = await s.until("response.done", fail_on=("error",))
        done = ev[-1]["response"]
        expect(done["status"] == "completed", f"status {done['status']}", ev)
        expect(audio_bytes(ev) > 0, "audio deltas", ev)
        transcript = [e for e in ev if e["type"] == "response.output_audio_transcript.done"]
        expect(transcript and "omorrow" in transcript[0]["transcript"], "the answer's transcript", ev)
        order = [t for t in types(ev) if t in ("response.created", "response.output_item.added",
            "response.content_part.added", "response.output_audio.delta", "response.output_audio.done",
            "response.content_part.done", "response.output_item.done", "response.done")]
        dedup = [t for i, t in enumerate(order) if i == 0 or order[i - 1] != t]
        expect(dedup == ["response.created", "response.output_item.added", "response.content_part.added",
            "response.output_audio.delta", "response.output_audio.done", "response.content_part.done",
            "response.output_item.done", "response.done"], f"event order {dedup}")
        print("ok text turn")

        # The conversation's items: retrieve, truncate to what was played, delete.
        answer = done["output"][0]
        user_item = [e for e in s.seen if e["type"] == "conversation.item.done"][-1]["item"]
        await conn.conversation.item.retrieve(item_id=answer["id"])
        ev = await s.until("conversation.item.retrieved", fail_on=("error",))
        got = ev[-1]["item"]
        expect(got["id"] == answer["id"] and got["content"][0]["transcript"] == transcript[0]["transcript"],
               f"the item as it was said: {got}")
        await conn.conversation.item.truncate(item_id=answer["id"], content_index=0, audio_end_ms=900)
        ev = await s.until("conversation.item.truncated", fail_on=("error",))
        expect(ev[-1]["item_id"] == answer["id"] and ev[-1]["audio_end_ms"] == 900, f"truncated: {ev[-1]}")
        await conn.conversation.item.retrieve(item_id=answer["id"])
        ev = await s.until("conversation.item.retrieved", fail_on=("error",))
        cut = ev[-1]["item"]["content"][0]["transcript"]
        whole = transcript[0]["transcript"]
        expect(0 < len(cut) < len(whole) and whole.startswith(cut), f"{cut!r}: what 900 ms of {whole!r} said")
        await conn.send({"type": "conversation.item.truncate", "item_id": answer["id"], "content_index": 0,
                         "audio_end_ms": 600000, "event_id": "evt_trunc_far"})
        ev = await s.until("error")
        err = ev[-1]["error"]
        expect(err["param"] == "audio_end_ms" and err["event_id"] == "evt_trunc_far", f"past the audio: {err}")
        for item_id in (answer["id"], user_item["id"]):
            await conn.conversation.item.delete(item_id=item_id)
            ev = await s.until("conversation.item.deleted", fail_on=("error",))
            expect(ev[-1]["item_id"] == item_id, f"deleted: {ev[-1]}")
        await conn.send({"type": "conversation.item.retrieve", "item_id": answer["id"], "event_id": "evt_gone"})
        ev = await s.until("error")
        expect(ev[-1]["error"]["code"] == "item_not_found", f"a deleted item is gone: {ev[-1]}")
        print("ok items")

        # response.create with settings of its own: echoed metadata; an unsupported one is refused.
        await conn.conversation.item.create(item={"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "what about tomorrow"}]})
        await conn.send({"type": "response.create", "event_id": "evt_oob",
                         "response": {"conversation": "none"}})
        ev = await s.until("error")
        expect(ev[-1]["error"]["param"] == "response.conversation", f"out-of-band: {ev[-1]}")
        await conn.response.create(response={"instructions": "Answer briefly.", "metadata": {"topic": "weather"},
                                             "audio": {"output": {"voice": "cedar"}}})
        ev = await s.until("response.done", fail_on=("error",))
        expect(ev[0]["type"] == "response.created" and ev[0]["response"]["metadata"] == {"topic": "weather"},
               f"metadata on response.created: {ev[0]}")
        expect(ev[-1]["response"]["metadata"] == {"topic": "weather"} and ev[-1]["response"]["status"] == "completed",
               f"and on response.done: {ev[-1]['response']}")
        print("ok response overrides")

        # A client-side function call round trip.
        await conn.conversation.item.create(item={"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "please open the door"}]})
        await conn.response.create()
        ev = await s.until("response.done", fail_on=("error",))
        call = [e for e in ev if e["type"] == "response.function_call_arguments.done"]
        expect(call and call[0]["name"] == "open_door", "a function call", ev)
        expect(json.loads(call[0]["arguments"]) == {"door": "front"}, "its arguments")
        expect(ev[-1]["response"]["output"][-1]["type"] == "function_call", "the response's output")
        await conn.conversation.item.create(item={"type": "function_call_output",
            "call_id": call[0]["call_id"], "output": json.dumps({"opened": True})})
        await conn.response.create()
        ev = await s.until("response.done", fail_on=("error",))
        expect(ev[-1]["response"]["status"] == "completed", "the answer after the output", ev)
        expect(audio_bytes(ev) > 0, "it is spoken", ev)
        said = [e["transcript"] for e in ev if e["type"] == "response.output_audio_transcript.done"]
        expect(said and "opened" in said[0], f"the model used the output: {said}")
        print("ok function call")

        # An audio turn with server VAD.
        await s.append(silence[: 24 * 2 * 300] + weather + silence)
        ev = await s.until("response.done", fail_on=("error",))
        t = types(ev)
        for want in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "conversation.item.added",
                     "conversation.item.input_audio_transcription.completed", "response.created"):
            expect(want in t, f"no {want}", ev)
        heard = [e for e in ev if e["type"] == "conversation.item.input_audio_transcription.completed"][0]
        expect("weather" in heard["transcript"], f"transcript {heard['transcript']!r}")
        expect(ev[-1]["response"]["status"] == "completed" and audio_bytes(ev) > 0, "answered", ev)
        print("ok audio turn")

        # Server VAD's own settings, and input transcripts off.
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700,
                               "prefix_padding_ms": 200},
            "transcription": None}}})
        ev = await s.until("session.updated", fail_on=("error",))
        td = ev[-1]["session"]["audio"]["input"]["turn_detection"]
        expect((td["threshold"], td["silence_duration_ms"], td["prefix_padding_ms"]) == (0.6, 700, 200),
               f"server_vad's fields: {td}")
        expect(ev[-1]["session"]["audio"]["input"]["transcription"] is None, "transcription off")
        await s.append(silence[: 24 * 2 * 300] + weather + silence)
        ev = await s.until("response.done", fail_on=("error",))
        t = types(ev)
        expect("input_audio_buffer.speech_stopped" in t, "the turn ends", ev)
        expect("conversation.item.input_audio_transcription.completed" not in t, "no transcript", ev)
        expect(ev[-1]["response"]["status"] == "completed", "answered", ev)
        await conn.send({"type": "session.update", "event_id": "evt_idle_vad", "session": {"type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "semantic_vad", "idle_timeout_ms": 5000}}}}})
        ev = await s.until("error")
        expect(ev[-1]["error"]["param"] == "session.audio.input.turn_detection.idle_timeout_ms"
               and ev[-1]["error"]["event_id"] == "evt_idle_vad", f"idle timeouts are server_vad's: {ev[-1]}")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "medium"},
            "transcription": {"model": "whisper-1", "language": "en"}}}})
        ev = await s.until("session.updated", fail_on=("error",))
        inp = ev[-1]["session"]["audio"]["input"]
        expect(inp["turn_detection"]["type"] == "semantic_vad" and inp["transcription"]["language"] == "en",
               f"semantic_vad and transcription back on: {inp}")
        print("ok turn detection")

        # create_response false: the turn joins the conversation, transcribed, unanswered, until
        # response.create (which a running answer would have made a cancelled one first).
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "create_response": False}}}})
        ev = await s.until("session.updated", fail_on=("error",))
        expect(ev[-1]["session"]["audio"]["input"]["turn_detection"]["create_response"] is False,
               "create_response false reported")
        await s.append(silence[: 24 * 2 * 300] + weather + silence)
        ev = await s.until("conversation.item.done", fail_on=("error", "response.created"))
        heard = [e for e in ev if e["type"] == "conversation.item.input_audio_transcription.completed"]
        expect(heard and "weather" in heard[0]["transcript"], "transcribed", ev)
        await conn.response.create()
        ev = await s.until("response.done", fail_on=("error",))
        expect(types(ev).count("response.created") == 1 and ev[-1]["response"]["status"] == "completed",
               "one response, asked for", ev)
        said = [e["transcript"] for e in ev if e["type"] == "response.output_audio_transcript.done"]
        expect(said and "sunny" in said[0], f"it answers the turn: {said}")
        print("ok create_response false")

        # An audio item: transcribed into the conversation, answered on response.create.
        await conn.conversation.item.create(item={"id": "item_mine", "type": "message", "role": "user",
            "content": [{"type": "input_audio", "audio": base64.b64encode(weather).decode()}]})
        ev = await s.until("conversation.item.done", fail_on=("error", "response.created"))
        expect(ev[0]["type"] == "conversation.item.added" and ev[0]["item"]["id"] == "item_mine", "added", ev)
        expect(ev[-1]["item"]["id"] == "item_mine" and "weather" in ev[-1]["item"]["content"][0]["transcript"],
               f"its transcript: {ev[-1]}")
        await conn.response.create()
        ev = await s.until("response.done", fail_on=("error",))
        said = [e["transcript"] for e in ev if e["type"] == "response.output_audio_transcript.done"]
        expect(ev[-1]["response"]["status"] == "completed" and said and "sunny" in said[0], f"answered: {said}")
        print("ok audio item")

        # interrupt_response false: speech during an answer does not stop it; it is answered after.
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": False}}}})
        await s.until("session.updated", fail_on=("error",))
        await conn.conversation.item.create(item={"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "tell me a story"}]})
        await conn.response.create()
        await s.until("response.output_audio.delta", fail_on=("error",))
        await s.append(interrupt + silence)
        ev = await s.until("response.done", fail_on=("error",))
        t = types(ev)
        expect("input_audio_buffer.speech_started" in t, "the speech is heard", ev)
        expect(ev[-1]["response"]["status"] == "completed" and "conversation.item.truncated" not in t,
               "the story plays to its end", ev)
        ev = await s.until("response.done", fail_on=("error",))
        expect(ev[-1]["response"]["status"] == "completed" and audio_bytes(ev) > 0,
               "then the speech is answered", ev)
        print("ok interrupt_response false")

        # idle_timeout_ms: silence after an answer makes the bot speak again.
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "interrupt_response": True, "idle_timeout_ms": 1000}}}})
        await s.until("session.updated", fail_on=("error",))
        ev = await s.until("response.done", fail_on=("error", "input_audio_buffer.speech_started"))
        t = types(ev)
        expect("input_audio_buffer.timeout_triggered" in t and t.index("input_audio_buffer.timeout_triggered")
               < t.index("response.created"), "timeout_triggered, then the answer", ev)
        trig = ev[t.index("input_audio_buffer.timeout_triggered")]
        expect(trig["audio_end_ms"] >= trig["audio_start_ms"], f"the silent segment: {trig}")
        expect(ev[-1]["response"]["status"] == "completed", "spoken", ev)
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "idle_timeout_ms": None}}}})
        await s.until("session.updated", fail_on=("error",))
        print("ok idle timeout")

        # Barge-in: the user speaks into a long answer.
        await conn.conversation.item.create(item={"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "tell me a story"}]})
        await conn.response.create()
        await s.until("response.output_audio.delta", fail_on=("error",))
        await asyncio.sleep(0.5)
        await s.append(interrupt + silence)
        ev = await s.until("response.done", fail_on=("error",))
        t = types(ev)
        expect("input_audio_buffer.speech_started" in t, "speech_started", ev)
        expect(t.index("input_audio_buffer.speech_started") < t.index("response.done"), "at once", ev)
        done = ev[-1]["response"]
        expect(done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected",
               f"cancelled by the turn: {done['status']} {done.get('status_details')}")
        expect("conversation.item.truncated" in t, "the answer truncated to what was heard", ev)
        ev = await s.until("response.done", fail_on=("error",))
        expect(ev[-1]["response"]["status"] == "completed", "the user's words are answered", ev)
        print("ok barge-in")

        # response.cancel.
        await conn.conversation.item.create(item={"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "tell me a story"}]})
        await conn.response.create()
        await s.until("response.output_audio.delta", fail_on=("error",))
        await conn.response.cancel()
        ev = await s.until("response.done", fail_on=("error",))
        done = ev[-1]["response"]
        expect(done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled",
               f"cancelled by the client: {done}")
        print("ok cancel")

        # Bad events: an error that names the client's event, and the session goes on.
        await conn.send({"type": "dance", "event_id": "evt_bad_1"})
        ev = await s.until("error")
        err = ev[-1]["error"]
        expect(err["event_id"] == "evt_bad_1" and err["param"] == "type", f"the error names the event: {err}")
        await conn.send({"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "evt_bad_2"})
        ev = await s.until("error")
        expect(ev[-1]["error"]["event_id"] == "evt_bad_2", "bad base64")
        print("ok bad events")

        # Manual turns: commit makes the buffer a turn, response.create answers it.
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await s.until("session.updated", fail_on=("error",))
        await s.append(weather)
        await conn.input_audio_buffer.commit()
        ev = await s.until("conversation.item.done", fail_on=("error", "response.created"))
        expect("input_audio_buffer.committed" in types(ev), "committed", ev)
        await conn.response.create()
        ev = await s.until("response.done", fail_on=("error",))
        said = [e["transcript"] for e in ev if e["type"] == "response.output_audio_transcript.done"]
        expect(ev[-1]["response"]["status"] == "completed" and said and "sunny" in said[0],
               f"the committed turn answered: {said}")
        print("ok manual turn")

        # G.711 μ-law out: 8 kHz, one byte a sample.
        await conn.session.update(session={"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}})
        ev = await s.until("session.updated", fail_on=("error",))
        expect(ev[-1]["session"]["audio"]["output"]["format"]["type"] == "audio/pcmu", "pcmu applied")
        await conn.conversation.item.create(item={"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "what about tomorrow"}]})
        await conn.response.create()
        ev = await s.until("response.done", fail_on=("error",))
        n = audio_bytes(ev)
        expect(n > 8000, f"{n} bytes of μ-law", ev)
        print("ok g711")
    print(f"ok all: {len(s.seen)} server events validated")


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
