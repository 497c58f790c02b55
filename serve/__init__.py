"""The lmforge HTTP service: FastAPI on onnxruntime, with dynamic micro-batching.

Nothing on this path imports torch or transformers; `uvicorn serve.app:app` runs it.
"""
