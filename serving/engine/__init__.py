"""The engine layer: the contract (`base`), its engines (`vllm_engine`, `simulator`) and `factory`.

It imports nothing above it: no HTTP, no Ray. Errors come from `serving.errors`.
"""
