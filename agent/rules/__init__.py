"""Local cold-chain rules: profiles, incremental evaluation, alarms."""
