"""The Anthropic Messages API, as the gateway's clients speak it (`POST /v1/messages`).

    request.py    the client's body checked (a 400 naming the field), kept as sent
    errors.py     failures in Anthropic's error shape: the gateway's codes -> Anthropic error types
    to_chat.py    a Messages request as a Chat Completions request, for OpenAI-compatible providers
    from_chat.py  a Chat Completions answer (chunks, or a whole completion) as a Messages answer

An Anthropic provider needs none of the translations: it gets the client's
body with the arm's model, and its events reach the client as they came
(`providers/anthropic.py`). All of it is bytes and dicts, without I/O.
"""
