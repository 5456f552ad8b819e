"""The contracts every part shares: settings, bus messages, subject and key names, errors, delivery policy."""
