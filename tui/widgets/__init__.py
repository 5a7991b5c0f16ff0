"""widgets of the mergescope app."""
