"""bertfleet orchestrator package."""
