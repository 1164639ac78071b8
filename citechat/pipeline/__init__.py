"""The chat pipeline: prompts, modes, answerers, citation checks, the chat engine."""
