"""Live consultations: access, the transcript, and the copy each process keeps
for ``assistant:ask``."""
