"""Built-in mock LLM provider: a real aiohttp server speaking the OpenAI Chat
Completions and Anthropic Messages dialects, streaming and not.

The gateway reaches it over TCP exactly like a real provider, so its tests can
drive latency and faults (status errors, dropped or truncated streams, stalls,
rejected keys) through request headers and then ask `/_mock/requests` what the
provider actually saw, including when it noticed the client going away
(when recording is on; see below).

Every endpoint is served at `/v1/...` (profile "default") and at
`/{profile}/v1/...`, so one server can pose as several providers whose latency
differs by profile; an unknown profile name gets the default profile.

Per-request headers:
  X-Mock-Tokens, X-Mock-First-Token-Delay-Ms, X-Mock-Inter-Token-Delay-Ms
                          override the profile
  X-Mock-Line-Ending      lf | crlf | cr, inside and between SSE lines
  X-Mock-Chunk-Bytes      write the stream in K-byte pieces
  X-Mock-Require-Key      401 unless the dialect's key header carries it
  X-Mock-Scope            profiles that X-Mock-Fault and X-Mock-Require-Key
                          apply to (default: all); the knobs apply regardless
  X-Mock-Fault            `;`-separated key=value:
      status=S[;retry_after=R]  error response in the dialect's shape
      drop_after=N              N tokens, then close without ending the body
      truncate_after=N          N tokens, then end the body without terminator
      error_after=N             N tokens, then an in-stream error event
      stall=headers | stall=first | stall_after=N
                                no headers / headers only / N tokens, then
                                nothing for an hour (client close still seen)
      garbage_after=N           N tokens, then an HTML error page (lines with
                                no SSE field), then the body ends
      bad_json_after=N          N tokens, then `data: {"choices": [` (not
                                JSON), then the body ends
      endless_after=N[;endless_bytes=B]
                                N tokens, then `data: ` and B bytes (default
                                1 GiB) with no line ending, as fast as the
                                reader takes them, then the body ends
      content_type=T            the stream's Content-Type instead of
                                text/event-stream
      omit_usage=1              no usage objects
      times=K;key=X             only the first K in-scope requests with key X

The first delay runs from the headers to the first token, which carries the
stream preamble (OpenAI role chunk; Anthropic message_start,
content_block_start, ping) with it: a fault after 0 tokens sends no events.

Recording is off unless asked for (`record_requests=True`, `gateway
mock-upstream --record`, `[mock] record_requests = true`): the mock inside
`gateway serve` answers anyone on its port, and records hold prompts. When on,
GET /_mock/requests lists one record per chat/messages request: id, dialect,
profile, path, headers (lowercase names; a credential header such as
Authorization, X-Api-Key, Cookie or X-Mock-Require-Key keeps its name with the
value "[redacted]"), api_key (absent | present | matched | mismatched: the
dialect's key against the required ones, never the key), body (the JSON;
text if it is not JSON or was cut at the body bound), body_bytes, body_truncated,
started, ended (null while in flight), status (sent HTTP status, null if
none), tokens_sent, bytes_sent (stream body bytes) and outcome: null while in
flight, then completed | client_closed | dropped | truncated | error_event |
stalled | garbage | bad_json | endless | status (a non-2xx answer) |
server_shutdown | cancelled | error.
DELETE /_mock/requests clears records and `times` counters. Records are bounded
by count and by bytes (`RecordLimits`); the oldest go first. Off, both paths
are 404 and nothing is kept.
"""

from __future__ import annotations

from .dialects import WORDS, mock_text
from .knobs import MockProfile
from .server import build_mock_app, start_mock

__all__ = ["WORDS", "MockProfile", "build_mock_app", "mock_text", "start_mock"]
