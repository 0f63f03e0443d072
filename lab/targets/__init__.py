"""Where the appliance runs: profiles (virtual hardware) and drivers (Target, Instance)."""
