"""Rollout service: vLLM engine running the search loop (import name `searchrl_rollout`)."""
