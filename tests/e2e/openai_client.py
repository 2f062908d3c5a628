"""Drives the gateway with the official `openai` Python client.

Usage: openai_client.py BASE_URL MODEL SCENARIO [API_KEY]
Prints one JSON object with what it observed; exits non-zero on any failure.
"""
import json
import sys

import openai


def main() -> int:
    base_url, model, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    api_key = sys.argv[4] if len(sys.argv) > 4 else "unused"
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "Tell me something."}]
    out = {}
    if scenario == "basic":
        r = client.chat.completions.create(model=model, messages=messages, seed=11)
        out["text"] = r.choices[0].message.content
        out["finish_reason"] = r.choices[0].finish_reason
        out["usage"] = r.usage.model_dump() if r.usage else None
        chunks = list(client.chat.completions.create(model=model, messages=messages, seed=11, stream=True))
        out["stream_text"] = "".join(
            c.choices[0].delta.content or "" for c in chunks if c.choices
        )
        out["stream_chunks"] = len(chunks)
        out["stream_usage_chunks"] = sum(1 for c in chunks if c.usage is not None)
        models = client.models.list()
        out["models"] = [m.id for m in models.data]
    elif scenario == "usage":
        # Without include_usage the client must see no usage chunk; with it,
        # exactly one, with choices == [] (chat-completions.md §4).
        plain = list(client.chat.completions.create(model=model, messages=messages, seed=5, stream=True))
        out["plain_usage_chunks"] = sum(1 for c in plain if c.usage is not None)
        out["plain_empty_choice_chunks"] = sum(1 for c in plain if not c.choices)
        asked = list(client.chat.completions.create(
            model=model, messages=messages, seed=5, stream=True,
            stream_options={"include_usage": True}))
        usage = [c.usage.model_dump() for c in asked if c.usage is not None]
        out["asked_usage"] = usage
        out["asked_last_choices"] = len(asked[-1].choices)
    elif scenario == "errors":
        try:
            client.chat.completions.create(model="no-such-model", messages=messages)
            out["not_found"] = "no error"
        except openai.NotFoundError as e:
            out["not_found"] = e.body
        try:
            client.chat.completions.create(model=model, messages=messages, temperature=3)
            out["bad_request"] = "no error"
        except openai.BadRequestError as e:
            out["bad_request"] = e.body
    elif scenario == "stream_error":
        # Every worker drops the stream after its head: the gateway ends the
        # stream it already started with an in-band error event, which the
        # client must raise rather than end quietly.
        seen = 0
        try:
            stream = client.chat.completions.create(
                model=model, messages=messages, stream=True,
                extra_headers={"x-sim-fault": "close_after_headers"})
            for _ in stream:
                seen += 1
            out["raised"] = None
        except openai.APIError as e:
            out["raised"] = type(e).__name__
            out["message"] = e.message
        out["chunks_before_error"] = seen
    else:
        print(f"unknown scenario {scenario}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
