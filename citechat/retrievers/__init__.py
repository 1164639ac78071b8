"""Retrieval backends behind LlamaIndex's ``BaseRetriever``: the local hybrid index and Ragie."""
