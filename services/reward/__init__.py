"""Reward service: stateless batched scoring with the seeds' reward rules (R1-Searcher, ReSearch, Search-R1;
docs/rewards.md); import name `searchrl_reward`."""
