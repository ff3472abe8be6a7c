"""The direct ingress's pieces: the OpenAI app served from inside each LLM-server replica.

`http_server.py` runs uvicorn with SO_REUSEPORT on the replica's own loop;
`engine_loop.py` is that loop (uvloop, on a thread of its own), shared with the
engine client. `serving/deployments/llm_server.py` starts both.
"""
