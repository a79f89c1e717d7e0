"""What the tools run end to end: the main job, the model demo, torchvision imports,
and what the command-line tools share."""
