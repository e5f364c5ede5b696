"""searchrl: RL that teaches an LLM to search, as gRPC services (core: config, records, Redis, gRPC, CLI)."""
