"""Retriever service: dense passage search over a FAISS index (import name `searchrl_retriever`)."""
