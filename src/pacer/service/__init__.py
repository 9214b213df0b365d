"""The long-running service: upstream senders, the daemon that wires them, systemd."""
