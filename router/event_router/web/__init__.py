"""HTTP pieces the outputs share: authentication, signing, CloudEvents, reading answers."""
