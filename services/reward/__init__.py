"""Reward service: stateless batched scoring with the R1-Searcher rules (import name `searchrl_reward`)."""
