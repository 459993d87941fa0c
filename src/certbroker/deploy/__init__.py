"""Push targets: a certificate's files installed where servers read them (local, SSH)."""
