"""First-party data plugins, registered through the `plexa.data` entry points."""
