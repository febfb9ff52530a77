"""HTTP conventions shared by every service: error bodies, request context, health."""
