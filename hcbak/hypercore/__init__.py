"""hypercore package."""
