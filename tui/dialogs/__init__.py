"""dialogs of the mergescope app."""
