"""Backends behind one interface: `local` (this process only, the default) and, later, Redis."""
