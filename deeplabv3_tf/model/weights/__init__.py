"""Weights from elsewhere: keras.applications' ImageNet `.h5` files, torchvision's
`.pth` files."""
