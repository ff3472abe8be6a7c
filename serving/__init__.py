"""OpenAI-compatible LLM serving on Ray Serve and vLLM, with a direct low-overhead ingress.

The layers, each importing only the ones below it (checked by import-linter in CI):

    serving.deployments   Ray Serve: the app builder, replicas, autoscaling, node tuning
    serving.routing       request routers (pure policy + thin Ray adapters)
    serving.api           the OpenAI HTTP API (FastAPI), no Ray
    serving.engine        the engine contract and its engines (vLLM, simulator)
    serving.config, serving.errors, serving.observability, serving.models
"""

__version__ = "0.2.0"
