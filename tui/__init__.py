"""mergescope's user interfaces: the `mergescope` CLI and the Textual app."""
