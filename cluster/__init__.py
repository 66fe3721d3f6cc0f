"""bertfleet cluster package."""
