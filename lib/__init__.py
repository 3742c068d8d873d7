"""Korean-English integration toolkit for Llama models."""
