"""The consultation assistant: prompts, the model's token streams, and the answers
streamed to the doctor."""
