"""The Responses API (`/v1/responses`): what the openai SDK and agent SDKs now default to.

A response is served as the chat completion it amounts to, so everything the
chat path has holds here too (placement and forwarding, limits and leases,
structured output, tool calls): `serving.py` turns the request (with the
conversation of its `previous_response_id`) into a `ChatCompletionRequest` and
the chat answer back into a Response object or its typed stream events.
`store.py` keeps stored responses where every replica of every node finds
them (a Ray actor per app, see serving/deployments/response_store.py), bounded
in time and size, and each visible only to the API key that made it.
"""
