"""KubeRay manifests rendered from the Serve configs in configs/ (`python -m serving_k8s`).

Apart from the runtime package: nothing in `serving` imports it, and the pods
never run it. It reads configs through `serving.config` and checks them as
`python -m serving check` does.
"""
