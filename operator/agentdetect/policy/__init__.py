"""A profile becomes Tetragon policies: names, hostname resolution, rendering through the
Jinja templates, and the board of what each profile rendered. Pure: no Kubernetes I/O."""
