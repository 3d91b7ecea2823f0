"""JT/T 809 gateway: Vigil as the superior platform receiving lower platforms' vehicle data."""
