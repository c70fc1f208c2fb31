"""`timebill ...` commands."""
