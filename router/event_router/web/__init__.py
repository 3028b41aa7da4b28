"""HTTP pieces shared by the webhook input and the outputs: authentication, signing, CloudEvents, reading
answers."""
