"""Optional integrations: each module names the extra it needs."""
