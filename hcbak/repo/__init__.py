"""repo package."""
