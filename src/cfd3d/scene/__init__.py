"""What is rendered: cameras, learnable fields and ground-truth toy scenes."""
