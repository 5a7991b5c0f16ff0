"""screens of the mergescope app."""
