"""bertfleet jobs package."""
