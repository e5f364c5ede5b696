"""The trained agent served over HTTP (`searchrl serve agent`): one question at a time through the rollout's search
rules (loop.py), a FastAPI app with JSON and SSE answers and a one-page UI (app.py, static/), and the wiring
from a config (serve.py). docs/serving.md describes the API."""
