"""First-party architecture plugins, registered through the `plexa.architectures` entry points."""
